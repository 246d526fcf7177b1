"""Worker tests use the notification fixtures (FCM imitation, settings pointing at it)."""

from tests.notify.conftest import (  # noqa: F401  # fixtures are found by name in this module
    fcm,
    push_services,
    push_settings,
)
