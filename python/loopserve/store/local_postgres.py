"""A throwaway PostgreSQL server on this machine, for tests, benchmarks and the fleet demo.

`LocalPostgres()` runs initdb and pg_ctl (Debian's `postgresql` package) in a temporary
directory, listening on a free loopback port and on a Unix socket in that directory, with trust
authentication for a `loopserve` superuser; `stop()` removes it. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user (else `nobody`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from loopserve.errors import LoopserveError

USER = "loopserve"


class PostgresUnavailable(LoopserveError):
    """No PostgreSQL server binaries here, or the server would not start."""


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: on PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        bindir = Path(os.path.realpath(on_path)).parent
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run "
                              "PostgreSQL (it refuses to run as root)")


class LocalPostgres:
    """A running server; `url(database)` is a URL for a store. Use as a context manager or call stop()."""

    def __init__(self, durable: bool = False):
        """`durable=False` turns fsync off (tests: fast); True keeps the defaults (benchmarks)."""
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                                      "/usr/lib/postgresql/*/bin: install the Debian package `postgresql`")
        self.bindir = bindir
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="loopserve-pg-"))
        self.port = _free_port()
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._data = self.dir / "data"
        self._started = False
        try:
            self._pg("initdb", "-D", str(self._data), "-U", USER, "--auth=trust", "--locale=C", "-E", "UTF8",
                     "--no-sync")
            options = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1", "-c max_connections=200"]
            if not durable:
                options += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
            self._pg("pg_ctl", "-D", str(self._data), "-l", str(self.dir / "server.log"), "-o", " ".join(options),
                     "-w", "-t", "60", "start")
            self._started = True
        except BaseException:
            self.stop()
            raise

    def _pg(self, program: str, *args: str) -> None:
        result = subprocess.run([str(self.bindir / program), *args], cwd=self.dir, user=self.user,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{program} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n{tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` (if missing) and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._pg("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
