"""Consultations: discovery, presence, the request/booking state machine, waitlist, promos, reviews,
and the chat messages of a consultation."""
