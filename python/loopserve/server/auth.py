"""The management token: routes that change what the server does, or read or write the data
its closed loop learns from, need `Authorization: Bearer <management_token>` when the server
config sets one (repository load/unload, traffic changes, feedback labels, drift reports and
sketches)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from loopserve.server.http_errors import Unauthorized


class ManagementToken:
    def __init__(self, token: str | None):
        self.expected = None if token is None else f"Bearer {token}".encode()

    def check(self, request: Request) -> None:
        """Raises Unauthorized (401) unless the request carries the token; open when none is set."""
        if self.expected is None:
            return
        header = request.headers.get("authorization", "")
        # Timing-safe: how much of a guess matched must not show in how long the refusal takes.
        if not hmac.compare_digest(header.encode(), self.expected):
            raise Unauthorized("this route needs the header 'Authorization: Bearer <management_token>' "
                               "with the token from the server config")
