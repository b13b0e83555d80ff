"""Which replicas make up a fleet: a list of base URLs, or a DNS name whose addresses are the
replicas (`dns://NAME:PORT`, as a Kubernetes headless Service gives: one A/AAAA record per ready pod).
A name is resolved again on every call, so replicas that come and go are followed."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from loopserve.errors import LoopserveError
from loopserve.pipeline.server_view import ServerUnavailable

DNS_SCHEME = "dns://"


class ReplicaSpecError(LoopserveError, ValueError):
    pass


class UnresolvedReplicas(ReplicaSpecError, ServerUnavailable):
    """A fleet's DNS name does not resolve now: like a server down, a reader retries later."""


def resolve_replicas(spec: str | list[str]) -> list[str]:
    """Base URLs (`http://host:port`) of the replicas named by `spec`: a list of URLs and
    `dns://NAME:PORT` entries, or one string of them separated by commas."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise ReplicaSpecError("no replicas given: expected base URLs (http://host:port) or dns://NAME:PORT")
    urls: list[str] = []
    for item in items:
        for url in (_resolve_dns(item) if item.startswith(DNS_SCHEME) else [_check_url(item)]):
            if url not in urls:
                urls.append(url)
    return urls


def _check_url(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplicaSpecError(f"replica {url!r}: expected http://host:port, https://host:port or dns://NAME:PORT")
    return url.rstrip("/")


def _resolve_dns(item: str) -> list[str]:
    parts = urlsplit(item)
    if not parts.hostname or not parts.port:
        raise ReplicaSpecError(f"replicas {item!r}: expected dns://NAME:PORT (the port every replica listens on)")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnresolvedReplicas(f"replicas {item!r}: cannot resolve {parts.hostname!r}: {e.strerror}") from None
    urls = []
    for family, _, _, _, address in infos:
        host = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
        url = f"http://{host}:{parts.port}"
        if url not in urls:
            urls.append(url)
    return urls
