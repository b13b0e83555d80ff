"""A run being recorded: `with start_run(...) as run:` logs params, metrics, tags, artifacts.

Each call is its own committed write, so what a run logged survives the process dying; a run
whose process died stays `running` (nobody was left to mark it).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping

import msgspec

from loopserve.store import Store, transaction, validate_name
from loopserve.tracking import env
from loopserve.tracking.errors import TrackingError
from loopserve.tracking.schema import prepare
from loopserve.tracking.times import now

_ENTRYPOINT_HELP = "expected 'package.module:function'"


def check_entrypoint(entrypoint: str) -> str:
    module, sep, function = entrypoint.partition(":")
    if not sep or not module or not function or not all(
            part.isidentifier() for part in (*module.split("."), *function.split("."))):
        raise TrackingError(f"invalid entrypoint {entrypoint!r}: {_ENTRYPOINT_HELP}")
    return entrypoint


def encode_value(kind: str, key: str, value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError) as e:
        raise TrackingError(f"{kind} {key!r}: value {value!r} is not JSON-encodable ({e}); expected a number, "
                            f"string, bool, None, or a list/dict of those") from None


class ActiveRun:
    """The run inside a `start_run` block. Use it from the thread that opened it."""

    def __init__(self, store: Store, run_id: str, experiment: str, params: dict[str, Any],
                 data_snapshot: str | None):
        self._store = store
        self.id = run_id
        self.experiment = experiment
        self.data_snapshot = data_snapshot
        self.params: dict[str, Any] = dict(params)
        self._next_step: dict[str, int] = {}

    def log_param(self, key: str, value: Any) -> None:
        """Record a hyperparameter. A param is set once: logging a different value is an error."""
        validate_name("param", key)
        text = encode_value("param", key, value)
        db = self._store.db
        with transaction(db):
            row = db.execute("SELECT value FROM run_params WHERE run_id=? AND key=?", (self.id, key)).fetchone()
            if row is not None and row[0] != text:
                raise TrackingError(f"run {self.id}: param {key!r} is already {row[0]}, cannot change it to "
                                    f"{text}; params are fixed once logged (use a metric or a tag for values "
                                    f"that change)")
            db.execute("INSERT INTO run_params (run_id, key, value) VALUES (?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
                       (self.id, key, text))
        self.params[key] = value

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self.log_param(key, value)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a metric value at `step` (default: one past this run's last step for `name`)."""
        validate_name("metric", name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TrackingError(f"metric {name!r}: value {value!r} is not a number") from None
        if math.isnan(number):
            raise TrackingError(f"metric {name!r}: value is NaN; expected a finite number or ±inf")
        if step is None:
            step = self._next_step.get(name, 0)
        elif not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise TrackingError(f"metric {name!r}: step {step!r} is not a non-negative integer")
        self._store.db.execute("INSERT INTO run_metrics (run_id, key, step, value, logged_at) VALUES (?, ?, ?, ?, ?)",
                               (self.id, name, step, number, now()))
        self._next_step[name] = max(self._next_step.get(name, 0), step + 1)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self.log_metric(name, value, step)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag (free text; a later value replaces an earlier one)."""
        validate_name("tag", key)
        self._store.db.execute("INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?) "
                               "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                               (self.id, key, str(value)))

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> list[str]:
        """Copy a file (or every file of a directory) into the blob store and record it with its sha256.

        Returns the recorded names: `name` (default the file's name) for a file, `name/relative
        path` for each file of a directory.
        """
        source = Path(path)
        base = name or source.name
        if source.is_file():
            files = [(base, source)]
        elif source.is_dir():
            files = [(f"{base}/{f.relative_to(source).as_posix()}", f)
                     for f in sorted(source.rglob("*")) if f.is_file()]
        else:
            raise TrackingError(f"artifact {str(source)!r} does not exist (expected a file or a directory)")
        for part in base.split("/"):
            validate_name("artifact", part)
        recorded = []
        for artifact_name, file in files:
            digest = self._store.blobs.put_file(file)
            self._store.db.execute("INSERT INTO run_artifacts (run_id, name, sha256, size) VALUES (?, ?, ?, ?) "
                                   "ON CONFLICT (run_id, name) DO UPDATE SET sha256 = excluded.sha256, "
                                   "size = excluded.size", (self.id, artifact_name, digest, file.stat().st_size))
            recorded.append(artifact_name)
        return recorded


def _new_run_id() -> str:
    return secrets.token_hex(8)


@contextlib.contextmanager
def start_run(experiment: str, params: Mapping[str, Any] | None = None, data_snapshot: str | None = None,
              tags: Mapping[str, Any] | None = None, store: Store | None = None, entrypoint: str | None = None,
              cwd: str | os.PathLike | None = None) -> Iterator[ActiveRun]:
    """Record a run of `experiment` for the duration of the `with` block.

    Recorded at the start: params, tags, the data snapshot id, the code version (git sha and
    dirty flag of the repository holding `cwd`, default the working directory), Python,
    platform, key package versions, the command line and `entrypoint` ("module:function",
    called as `function(params, data_snapshot, run)` by `reproduce`). At the end: the end time
    and status `finished`, or `failed` with the error text if the block raised (re-raised).
    """
    validate_name("experiment", experiment)
    if entrypoint is not None:
        check_entrypoint(entrypoint)
    if data_snapshot is not None and (not isinstance(data_snapshot, str) or not data_snapshot.isprintable()
                                      or not data_snapshot):
        raise TrackingError(f"invalid data snapshot id {data_snapshot!r}: expected a snapshot id string")
    params = dict(params or {})
    own = store is None
    store = prepare(Store() if own else store)
    try:
        code = env.code_version(cwd)
        run_id = _new_run_id()
        encoded = {k: encode_value("param", validate_name("param", k), v) for k, v in params.items()}
        db = store.db
        with transaction(db):
            db.execute(
                "INSERT INTO runs (id, experiment, status, start_time, data_snapshot, entrypoint, git_sha, git_dirty, "
                "git_root, python, platform, packages, command, cwd) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)",
                (run_id, experiment, now(), data_snapshot, entrypoint, code.git_sha,
                 None if code.git_dirty is None else int(code.git_dirty), code.git_root, env.python_version(),
                 env.platform_string(), msgspec.json.encode(env.package_versions()).decode(),
                 msgspec.json.encode(env.command_line()).decode(), str(Path(cwd or os.getcwd()).resolve())))
            db.executemany("INSERT INTO run_params (run_id, key, value) VALUES (?, ?, ?)",
                           [(run_id, k, v) for k, v in encoded.items()])
            db.executemany("INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?)",
                           [(run_id, validate_name("tag", k), str(v)) for k, v in (tags or {}).items()])
        run = ActiveRun(store, run_id, experiment, params, data_snapshot)
        try:
            yield run
        except BaseException as e:
            error = "".join(traceback.format_exception_only(type(e), e)).strip()
            db.execute("UPDATE runs SET status='failed', end_time=?, error=? WHERE id=?", (now(), error, run_id))
            raise
        db.execute("UPDATE runs SET status='finished', end_time=? WHERE id=?", (now(), run_id))
    finally:
        if own:
            store.close()
