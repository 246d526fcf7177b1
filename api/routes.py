"""Every router of the REST API, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from api import admin_money as admin_money_routes
from api import admin_promos as admin_promo_routes
from api import admin_verification, astrologer_profile, files, me, ops, rtc
from api import astrologer_status as astrologer_status_routes
from api import astrologers as astrologer_routes
from api import attachments as attachment_routes  # issue 17
from api import auth as auth_api
from api import consultations as consultation_routes
from api import earnings as earnings_routes
from api import follows as follow_routes
from api import messages as chat_messages
from api import notifications as notification_routes
from api import payments as payment_routes
from api import profiles as profile_routes  # issue 16
from api import questions as question_routes  # issue 16
from api import session_end as session_routes
from api import support as support_routes  # issue 17
from api import tips as tip_routes  # issue 17
from api import wallet as wallet_routes
from api.framework import Router

ROUTERS: list[Router] = [
    ops.router,
    auth_api.router,
    me.router,
    profile_routes.router,  # issue 16
    astrologer_profile.router,
    admin_verification.router,
    files.router,
    chat_messages.router,
    rtc.router,
    notification_routes.router,
    follow_routes.router,
    wallet_routes.router,
    payment_routes.router,
    earnings_routes.router,
    admin_money_routes.router,
    session_routes.router,
    astrologer_routes.router,
    astrologer_status_routes.router,
    consultation_routes.router,
    question_routes.router,  # issue 16
    admin_promo_routes.router,
    tip_routes.router,  # issue 17
    support_routes.router,  # issue 17
    attachment_routes.router,  # issue 17
]
