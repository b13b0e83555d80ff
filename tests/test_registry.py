"""The model registry: version numbers under concurrent writers and crashes, aliases with history,
rollback, lineage, verified materialize, and clear errors; on both store backends (a SQLite
directory and a real PostgreSQL server, see conftest) wherever the database matters."""

import datetime as dt
import multiprocessing as mp
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopserve.registry import (AliasConflict, RegistryError, UnknownAlias, UnknownModel, UnknownVersion, alias_at, alias_history,
                                current_version, get_version, lineage, list_models, list_versions, materialize,
                                clear_alias, parse_ref, register_model, rollback, set_alias,
                                set_version_metric, set_version_tag)
from loopserve.store import IntegrityError, Store
from loopserve.store.names import InvalidName
from loopserve.tracking import InvalidTimestamp, start_run


@pytest.fixture
def store(store_location):
    with Store(store_location) as s:
        yield s


def model_dir(path, content=b"weights"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(content)
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "config.json").write_text('{"max_batch_size": 8}')
    return path


def check_consistent(location):
    """Every version has all its rows and intact blobs; numbers are 1..N without gaps."""
    with Store(location) as s:
        if s.dialect == "sqlite":
            assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        versions = list_versions("m", store=s) if list_models(store=s) else []
        assert [v.version for v in versions] == list(range(1, len(versions) + 1))
        for v in versions:
            assert v.artifacts, f"version {v.version} has no artifact rows"
            for a in v.artifacts:
                s.blobs.verify(a.sha256)
            assert v.tags.get("writer") is not None
        for blob in s.blobs.root.rglob("*"):
            if blob.is_file() and not blob.name.startswith(".tmp-"):
                s.blobs.verify(blob.parent.name + blob.name)  # every complete blob is intact
        return versions


def test_register_versions_with_artifacts_tags_and_metrics(store, tmp_path):
    src = model_dir(tmp_path / "m1")
    v1 = register_model("fraud", src, tags={"framework": "onnx"}, metrics={"auc": 0.91}, description="first",
                        store=store)
    assert (v1.version, v1.tags, v1.metrics, v1.description) == (1, {"framework": "onnx"}, {"auc": 0.91}, "first")
    assert [a.path for a in v1.artifacts] == ["model.onnx", "sub/config.json"]
    assert v1.size == len(b"weights") + len('{"max_batch_size": 8}')
    v2 = register_model("fraud", src / "model.onnx", parent_version=1, store=store)
    assert v2.version == 2 and [a.path for a in v2.artifacts] == ["model.onnx"]
    assert register_model("fraud", src, store=store).content_digest == v1.content_digest  # same files, same digest
    assert register_model("other", src, store=store).version == 1  # numbers are per model
    set_version_tag("fraud", 2, "approved", "yes", store=store)
    set_version_metric("fraud", 2, "latency_ms", 1.5, store=store)
    v2 = get_version("fraud", 2, store=store)
    assert v2.tags == {"approved": "yes"} and v2.metrics == {"latency_ms": 1.5}
    assert get_version("fraud", store=store).version == 3  # latest
    assert [(m.name, m.latest_version, m.versions) for m in list_models(store=store)] == [("fraud", 3, 3),
                                                                                         ("other", 1, 1)]


def _register_many(root, writer, n, start=None):
    import tempfile
    from pathlib import Path

    with Store(root) as s, tempfile.TemporaryDirectory() as d:
        list_models(store=s)  # tables in place before the race starts
        if start is not None:
            start.wait()
        for k in range(n):
            f = Path(d) / "model.bin"
            f.write_bytes(f"{writer}-{k}".encode())
            register_model("m", f, tags={"writer": writer, "k": str(k)}, store=s)


def test_four_processes_registering_at_once_get_versions_1_to_160(store_location):
    root = store_location
    Store(root).close()
    ctx = mp.get_context("spawn")
    n, writers = 40, ("a", "b", "c", "d")
    start = ctx.Barrier(len(writers))
    procs = [ctx.Process(target=_register_many, args=(root, w, n, start)) for w in writers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # spawned processes start slowly on a loaded machine
        assert p.exitcode == 0
    versions = check_consistent(root)
    assert [v.version for v in versions] == list(range(1, 161))  # no gap, no duplicate
    with Store(root) as s:
        got = {(v.tags["writer"], int(v.tags["k"])): s.blobs.read_bytes(v.artifacts[0].sha256) for v in versions}
    assert got == {(w, k): f"{w}-{k}".encode() for w in writers for k in range(n)}  # nothing lost
    writers = [v.tags["writer"] for v in versions]
    assert sum(a != b for a, b in zip(writers, writers[1:])) >= 2  # the two really ran at once


CRASH_CHILD = Path(__file__).with_name("registry_crash_child.py")


def _child(root, path, writer, count, pause=None):
    """A process registering `count` versions; it prints "registering K" before each one."""
    return subprocess.Popen([sys.executable, str(CRASH_CHILD), str(root), str(path), writer, str(count),
                             *(["--pause", *pause] if pause else [])], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stage", ["after_blobs", "before_commit"])
def test_sigkill_in_the_middle_of_register_leaves_no_half_version(tmp_path, store_location, stage):
    root = store_location
    with Store(root) as s:
        register_model("m", model_dir(tmp_path / "v1"), tags={"writer": "setup"}, store=s)
    marker = tmp_path / "paused"
    child = _child(root, tmp_path / "f.bin", "killed", 1, pause=(stage, str(marker)))
    deadline = time.monotonic() + 60
    while not marker.exists():  # the child writes it at the stage, then waits to be killed
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    versions = check_consistent(root)  # the next open works
    assert [v.version for v in versions] == [1]
    with Store(root) as s:
        assert register_model("m", model_dir(tmp_path / "v2", b"new"), tags={"writer": "after"},
                              store=s).version == 2
    check_consistent(root)


def test_sigkill_at_random_points_in_a_loop_of_registers(tmp_path, store_location):
    """Each child is killed somewhere inside its k-th register (k random, at least the second, so
    that some versions are whole): the kill waits for the child's word, not for a guessed time."""
    root = store_location
    with Store(root) as s:
        register_model("m", model_dir(tmp_path / "v1"), tags={"writer": "setup"}, store=s)
    rng = random.Random(6)
    for attempt in range(4):
        child = _child(root, tmp_path / f"f{attempt}.bin", f"w{attempt}", 1000)
        k = rng.randrange(1, 20)
        for line in child.stdout:
            if line.strip() == f"registering {k}":
                break
        else:
            pytest.fail(f"the child exited with {child.wait()} before its register {k}")
        time.sleep(rng.random() * 0.005)  # a random point in the register (a few ms long), not a synchronisation
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        check_consistent(root)
    with Store(root) as s:
        before = len(list_versions("m", store=s))
        assert before > 0
        assert register_model("m", model_dir(tmp_path / "last", b"last"), tags={"writer": "last"},
                              store=s).version == before + 1


def test_materialize_verifies_every_file_and_refuses_tampering(store, tmp_path):
    register_model("fraud", model_dir(tmp_path / "src", b"x" * 4096), store=store)
    path = materialize("fraud", 1, store=store)
    assert (path / "model.onnx").read_bytes() == b"x" * 4096
    assert (path / "sub" / "config.json").exists()
    assert materialize("fraud", 1, store=store) == path  # cached, keyed by content
    # An altered cache copy is rebuilt from the (verified) blobs.
    (path / "model.onnx").chmod(0o644)
    (path / "model.onnx").write_bytes(b"evil")
    assert (materialize("fraud", 1, store=store) / "model.onnx").read_bytes() == b"x" * 4096
    # An altered blob is refused, naming the model, version and file.
    blob = store.blobs.path(get_version("fraud", 1, store=store).artifacts[0].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"x" * 4095)  # truncated
    (path / "model.onnx").chmod(0o644)
    (path / "model.onnx").write_bytes(b"y")
    with pytest.raises(IntegrityError, match=r"model 'fraud' version 1: artifact 'model.onnx'.*modified or truncated"):
        materialize("fraud", 1, store=store)
    with pytest.raises(IntegrityError, match="model 'fraud' version 1: artifact 'model.onnx'"):
        materialize("fraud", 1, dest_dir=tmp_path / "out", store=store)
    assert not (tmp_path / "out" / "model.onnx").exists()
    blob.unlink()
    with pytest.raises(IntegrityError, match="'model.onnx'.*missing from the blob store"):
        materialize("fraud", 1, dest_dir=tmp_path / "out", store=store)


def test_set_alias_history_and_rollback(store, tmp_path):
    for k in range(3):
        register_model("fraud", model_dir(tmp_path / f"v{k}", bytes([k])), store=store)
    set_alias("fraud", "production", 1, reason="first launch", actor="alice", store=store)
    assert set_alias("fraud", "production", 1, store=store) is None  # already there: no event
    set_alias("fraud", "production", 2, store=store)
    set_alias("fraud", "staging", 3, store=store)
    event = set_alias("fraud", "production", "staging", store=store)  # another alias's version
    assert (event.version, event.previous_version) == (3, 2)
    assert current_version("fraud", "production", store=store) == 3
    assert get_version("fraud", "production", store=store).aliases == ["production", "staging"]
    assert rollback("fraud", store=store).version == 2
    assert rollback("fraud", store=store).version == 1  # again: one move further back
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        rollback("fraud", store=store)
    set_alias("fraud", "production", 3, store=store)
    assert rollback("fraud", store=store).version == 1
    history = alias_history("fraud", "production", store=store)
    assert [(e.action, e.previous_version, e.version) for e in history] == [
        ("set", None, 1), ("set", 1, 2), ("set", 2, 3), ("rollback", 3, 2), ("rollback", 2, 1), ("set", 1, 3),
        ("rollback", 3, 1)]
    assert (history[0].actor, history[0].reason) == ("alice", "first launch")
    assert [e.set_at for e in history] == sorted(e.set_at for e in history)


def test_an_alias_cleared_and_moved_compare_and_set(store, tmp_path):
    """A clear is a move kept in the history (a `delete` row, `version` the one it left): unset
    since then for alias_at and for rollback; `expect` refuses a move when the alias moved meanwhile."""
    for k in range(3):
        register_model("fraud", model_dir(tmp_path / f"v{k}", bytes([k])), store=store)
    set_alias("fraud", "canary", 1, store=store)
    set_alias("fraud", "canary", 2, store=store)
    with pytest.raises(AliasConflict, match="alias 'canary' of model 'fraud' is version 2 now, not version 1"):
        clear_alias("fraud", "canary", store=store, expect=1)
    with pytest.raises(AliasConflict, match="is version 2 now, not version 1"):
        set_alias("fraud", "canary", 3, store=store, expect=1)
    cleared = clear_alias("fraud", "canary", reason="run ended", actor="pipeline", store=store, expect=2)
    assert (cleared.action, cleared.version, cleared.previous_version) == ("delete", 2, 2)
    assert clear_alias("fraud", "canary", store=store) is None  # unset already: no event
    with pytest.raises(UnknownAlias):
        current_version("fraud", "canary", store=store)
    assert alias_at("fraud", "canary", time.time() + 60, store=store) is None
    assert alias_at("fraud", "canary", cleared.set_at, store=store) is None
    with pytest.raises(RegistryError, match="is unset \\(cleared\\)"):
        rollback("fraud", "canary", store=store)
    set_alias("fraud", "canary", 3, store=store, expect=None)  # only if unset
    assert rollback("fraud", "canary", store=store).version == 2  # the clear pushed nothing
    assert [e.action for e in alias_history("fraud", "canary", store=store)] == ["set", "set", "delete", "set",
                                                                                 "rollback"]


def test_alias_at_answers_which_version_held_an_alias_at_any_moment(store, tmp_path):
    for k in range(3):
        register_model("fraud", model_dir(tmp_path / f"v{k}", bytes([k])), store=store)
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    moves = [set_alias("fraud", "production", v, store=store) for v in (1, 2)] + [rollback("fraud", store=store)]
    moves.append(set_alias("fraud", "production", 3, store=store))
    assert alias_at("fraud", "production", before, store=store) is None
    for event in moves:
        at = dt.datetime.fromisoformat(event.set_at)
        assert alias_at("fraud", "production", event.set_at, store=store) == event.version
        assert alias_at("fraud", "production", at + dt.timedelta(microseconds=1), store=store) == event.version
        assert alias_at("fraud", "production", at - dt.timedelta(microseconds=1), store=store) == event.previous_version
    assert alias_at("fraud", "production", time.time() + 60, store=store) == 3
    assert alias_at("fraud", "production", "2000-01-01", store=store) is None
    with pytest.raises(UnknownAlias, match="never had an alias 'canary'"):
        alias_at("fraud", "canary", "2030-01-01", store=store)
    with pytest.raises(InvalidTimestamp, match="expected an ISO-8601"):
        alias_at("fraud", "production", "last tuesday", store=store)


def test_alias_at_between_moves_made_at_known_times(store, tmp_path):
    for k in range(2):
        register_model("fraud", model_dir(tmp_path / f"v{k}", bytes([k])), store=store)
    set_alias("fraud", "production", 1, store=store)
    time.sleep(0.02)
    middle = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.02)
    set_alias("fraud", "production", 2, store=store)
    assert alias_at("fraud", "production", middle, store=store) == 1
    assert alias_at("fraud", "production", middle.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat(),
                    store=store) == 1
    assert alias_at("fraud", "production", dt.datetime.now(dt.timezone.utc), store=store) == 2


def test_lineage_says_which_data_and_run_made_production(store, tmp_path):
    with start_run("fraud", params={"lr": 0.1}, data_snapshot="snap-abc", store=store) as run:
        run.log_metric("auc", 0.9)
    register_model("fraud", model_dir(tmp_path / "v1", b"1"), store=store)
    register_model("fraud", model_dir(tmp_path / "v2", b"2"), run_id=run.id[:8], parent_version=1, store=store)
    register_model("fraud", model_dir(tmp_path / "v3", b"3"), parent_version=2, data_snapshot="snap-new",
                   store=store)
    set_alias("fraud", "production", 2, store=store)
    line = lineage("fraud", "production", store=store)
    assert line.version.version == 2 and line.version.run_id == run.id
    assert line.run.id == run.id and line.run.params == {"lr": 0.1} and line.run.metrics == {"auc": 0.9}
    assert line.data_snapshot == "snap-abc" and line.version.data_snapshot == "snap-abc"  # from the run
    assert [p.version for p in line.parents] == [1]
    line3 = lineage("fraud", 3, store=store)
    assert [p.version for p in line3.parents] == [2, 1] and line3.data_snapshot == "snap-new" and line3.run is None


def test_bad_references_are_clear_errors(store, tmp_path):
    src = model_dir(tmp_path / "v1")
    register_model("fraud", src, store=store)
    with pytest.raises(UnknownModel, match="no registered model named 'nope'"):
        get_version("nope", 1, store=store)
    with pytest.raises(UnknownVersion, match="model 'fraud' has no version 7 \\(its versions are 1 to 1\\)"):
        get_version("fraud", 7, store=store)
    with pytest.raises(UnknownAlias, match="no alias 'production'.*'latest' or one of its aliases: \\(none set\\)"):
        current_version("fraud", "production", store=store)
    with pytest.raises(InvalidName, match="invalid model name '../x'"):
        register_model("../x", src, store=store)
    with pytest.raises(InvalidName, match="invalid alias name"):
        set_alias("fraud", "prod/uction", 1, store=store)
    with pytest.raises(UnknownVersion, match="parent version 5 of model 'fraud' does not exist"):
        register_model("fraud", src, parent_version=5, store=store)
    with pytest.raises(RegistryError, match="does not exist"):
        register_model("fraud", tmp_path / "missing", store=store)
    with pytest.raises(RegistryError, match="versions are numbered from 1"):
        get_version("fraud", 0, store=store)
    assert [v.version for v in list_versions("fraud", store=store)] == [1]  # the failed registers left nothing
    assert parse_ref("registry://fraud@production") == ("fraud", "production")
    assert parse_ref("fraud@3") == ("fraud", 3) and parse_ref("fraud") == ("fraud", None)


def test_concurrent_materialize_and_polling_current_version(tmp_path, store_location):
    import threading

    root = store_location
    with Store(root) as s:
        for k in range(2):
            register_model("fraud", model_dir(tmp_path / f"v{k}", bytes([k]) * 100_000), store=s)
        set_alias("fraud", "production", 1, store=s)
    paths, errors = [], []

    def load():
        try:
            with Store(root) as own:
                paths.append(materialize("fraud", "production", store=own))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert (paths[0] / "model.onnx").read_bytes() == bytes([0]) * 100_000
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith((".tmp-", ".stale-"))]
    with Store(root) as poller, Store(root) as writer:  # a long-lived poller sees another writer's move
        assert current_version("fraud", "production", store=poller) == 1
        set_alias("fraud", "production", 2, store=writer)
        assert current_version("fraud", "production", store=poller) == 2


def test_an_altered_content_digest_is_never_used_as_a_path(tmp_path):
    from loopserve.registry import materialize, register_model
    from loopserve.store import IntegrityError, Store

    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"weights")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    with Store(tmp_path / "store") as store:
        register_model("fraud", artifact, store=store)
        store.db.execute("UPDATE registry_versions SET content_digest = '../../../victim'")
        with pytest.raises(IntegrityError, match="not a sha256"):
            materialize("fraud", 1, store=store)
    assert (victim / "precious.txt").read_text() == "keep me"
