"""Notifications: the in-app inbox, devices, templates (English and Hindi) and delivery channels.

Other packages call `notify.notify(services, user_id, event, data, key=...)` and, when an
astrologer comes online, `notify.notify_followers(services, astrologer_id)`.
"""

from notify.api import enqueue_delivery, notify, notify_followers, record_txn

__all__ = ["enqueue_delivery", "notify", "notify_followers", "record_txn"]
