"""What the pipeline reads from a running loopserve server, over its HTTP API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from loopserve.errors import LoopserveError


class ServerUnavailable(LoopserveError):
    """The server did not answer, or answered with an HTTP error (`status`, else None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def management_headers() -> dict[str, str]:
    """A server with a management token guards its drift and sketch routes: readers send the
    token from $LOOPSERVE_MANAGEMENT_TOKEN (kept out of config files)."""
    token = os.environ.get("LOOPSERVE_MANAGEMENT_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServerView:
    def __init__(self, base_url: str, model: str, timeout_s: float = 10.0):
        self.base = base_url.rstrip("/")
        self.model = urllib.parse.quote(model, safe="")
        self.timeout_s = timeout_s
        self.headers = management_headers()

    def _get(self, path: str) -> dict:
        url = f"{self.base}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=self.timeout_s) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise ServerUnavailable(f"GET {url}: HTTP {e.code}: {body[:300]}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerUnavailable(f"GET {url}: {getattr(e, 'reason', e)}") from None

    def drift(self, windows: int = 10) -> dict:
        """The drift report of the stable version: closed windows only."""
        return self._get(f"/v2/models/{self.model}/drift?open=false&windows={windows}")

    def traffic(self) -> dict:
        """Loaded versions, weights, and each version's requests, errors and p99."""
        return self._get(f"/v2/models/{self.model}/traffic")

    def feedback(self) -> dict:
        """Live metrics per version, with every window kept (the accuracy trigger looks at the
        prediction-time windows that are complete, which may be far from the newest)."""
        return self._get(f"/v2/models/{self.model}/feedback?windows=all")
