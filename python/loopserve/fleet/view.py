"""What the pipeline and `loopserve drift` read from a fleet: every replica over HTTP, merged.

FleetView answers the same calls as the single-server ServerView (drift, feedback, traffic), so
the pipeline's triggers and canary steps decide on the merged view unchanged. Replicas are
read in parallel; one that does not answer is left out of that reading and named in
`unreachable` (a fleet keeps deciding while a pod restarts); none answering is ServerUnavailable.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import msgspec

from loopserve.config import DriftPolicy
from loopserve.fleet.merge import fleet_drift, merge_feedback, merge_traffic
from loopserve.fleet.replicas import resolve_replicas
from loopserve.monitor.profile import ReferenceProfile
from loopserve.pipeline.server_view import ServerUnavailable, management_headers


class _Profile(msgspec.Struct):
    profile: ReferenceProfile
    policy: DriftPolicy


class FleetView:
    """Not thread-safe (one per pipeline or command)."""

    def __init__(self, replicas: str | list[str], model: str, timeout_s: float = 10.0):
        self.spec = replicas
        self.model = model
        self._path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        self.timeout_s = timeout_s
        self.unreachable: dict[str, str] = {}
        self._profiles: dict[str, _Profile] = {}  # version -> its profile (immutable per version)
        self.last_merge_s = 0.0  # the time the last drift() spent merging and judging the windows

    def replicas(self) -> list[str]:
        return resolve_replicas(self.spec)

    # -- reading replicas ------------------------------------------------------------------

    def _get(self, url: str, msgpack: bool = False):
        headers = management_headers() | ({"Accept": "application/msgpack"} if msgpack else {})
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise ServerUnavailable(f"GET {url}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerUnavailable(f"GET {url}: {getattr(e, 'reason', e)}") from None
        return msgspec.msgpack.decode(body) if msgpack else json.loads(body)

    def _get_all(self, path: str, msgpack: bool = False, replicas: list[str] | None = None) -> dict[str, object]:
        """{replica: answer} of every replica that answered; the others into `unreachable`."""
        replicas = replicas if replicas is not None else self.replicas()
        answers, self.unreachable = {}, {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(replicas))) as pool:
            futures = {url: pool.submit(self._get, url + path, msgpack) for url in replicas}
        for url, future in futures.items():
            try:
                answers[url] = future.result()
            except ServerUnavailable as e:
                self.unreachable[url] = str(e)
        if not answers:
            raise ServerUnavailable(f"no replica of {self.spec!r} answered GET {path}: "
                                    + "; ".join(self.unreachable.values()))
        return answers

    # -- the ServerView interface ----------------------------------------------------------

    def drift(self, windows: int = 10, version: int | str | None = None, include_open: bool = False) -> dict:
        """The fleet's drift report of `version` (default: each replica's stable version, the one
        most replicas serve): merged windows judged with the version's profile and policy."""
        prefix = self._path + (f"/versions/{version}" if version is not None else "")
        sketches = self._get_all(prefix + "/drift/sketch", msgpack=True)
        versions = [p["version"] for p in sketches.values()]
        chosen = max(set(versions), key=versions.count)  # mid-rollout, replicas may differ
        used = {url: p for url, p in sketches.items() if p["version"] == chosen}
        profile = self._profile(chosen, next(iter(used)))
        started = time.perf_counter()
        drifts = fleet_drift(list(used.values()), profile.profile, profile.policy, include_open, windows)
        self.last_merge_s = time.perf_counter() - started
        closed = [w for w in drifts if w.closed]
        return {"model": self.model, "version": chosen, "reference_rows": profile.profile.rows,
                "alert": bool(closed) and closed[-1].verdict == "drift",
                "windows": msgspec.to_builtins(drifts),
                "replicas": {url: [{"rows": _rows(w), "closed": w["closed"]} for w in p["windows"]]
                             for url, p in used.items()},
                "other_versions": {url: p["version"] for url, p in sketches.items() if url not in used},
                "unreachable": dict(self.unreachable)}

    def _profile(self, version: str, replica: str) -> _Profile:
        if version not in self._profiles:
            body = self._get(f"{replica}{self._path}/versions/{version}/drift/profile")
            self._profiles[version] = msgspec.convert(body, _Profile)
        return self._profiles[version]

    def feedback(self) -> dict:
        reports = self._get_all(self._path + "/feedback")
        return merge_feedback(self.model, list(reports.values())) | {"unreachable": dict(self.unreachable)}

    def traffic(self) -> dict:
        states = self._get_all(self._path + "/traffic")
        return merge_traffic(list(states.values())) | {"unreachable": dict(self.unreachable)}

    def drift_by_version(self, windows: int = 10) -> dict[str, dict]:
        """Every served version's fleet drift report (versions without a drift monitor left out)."""
        reports = {}
        for version in self.traffic()["versions"]:
            try:
                reports[str(version)] = self.drift(windows, version=version, include_open=True)
            except ServerUnavailable as e:
                if "HTTP 404" not in str(e):
                    raise
        return reports


def _rows(window: dict) -> int:
    from loopserve import _core

    return int(_core.TensorAccumulator.deserialize(window["inputs"]).rows)
