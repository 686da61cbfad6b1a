"""The console shows the API's own error for a failed action, rendered into its page."""

from __future__ import annotations

from app.api.errors import GatewayError, gateway_error
from app.errors import DomainError

# What a console action may fail with: an HTTP-shaped error, or a core one the API maps.
ACTION_ERRORS = (GatewayError, DomainError)


def as_http_error(error: GatewayError | DomainError) -> GatewayError:
    """The status and message the API would answer for `error`."""
    return error if isinstance(error, GatewayError) else gateway_error(error)
