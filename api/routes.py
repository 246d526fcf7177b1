"""Every router of the REST API, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from api import ops
from api.framework import Router

ROUTERS: list[Router] = [ops.router]
