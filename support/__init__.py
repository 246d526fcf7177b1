"""Support tickets and refund requests (API.md v1.1 "Support tickets and refund requests").

`support.tickets` holds the use cases and their SQL; only it writes `support_tickets` and
`support_ticket_messages`. Ticket texts are personal data, stored as AES-GCM envelopes
(core/crypto.py).
"""
