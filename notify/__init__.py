"""Notifications: the in-app inbox, devices, templates (English and Hindi) and delivery channels."""
