"""Experiment tracking: runs record params, metrics over steps, tags, artifacts, code and environment."""

import datetime as dt
import subprocess
import sys

import pytest

from loopserve.errors import LoopserveError
from loopserve.store import Store
from loopserve.store.names import InvalidName
from loopserve.tracking import (InvalidTimestamp, RunNotFound, TrackingError, code_version, compare_runs, get_run,
                                list_runs, metric_history, parse_time, start_run)


@pytest.fixture
def store(store_location):  # each test on SQLite and on PostgreSQL
    with Store(store_location) as s:
        yield s


def git_repo(path):
    """A fresh git repository with one committed file; returns its HEAD sha."""
    path.mkdir(parents=True, exist_ok=True)
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=path, check=True)
    (path / "train.py").write_text("# training code\n")
    subprocess.run(["git", "add", "train.py"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "first"], cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_run_records_params_metrics_tags_artifacts_and_environment(store, tmp_path):
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"\x00\x01" * 500)
    with start_run("fraud", params={"lr": 0.01, "layers": [64, 32]}, data_snapshot="snap-1",
                   tags={"team": "risk"}, store=store, entrypoint="pkg.train:main") as run:
        run.log_param("epochs", 3)
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            run.log_metric("loss", loss, step=step)
        run.log_metric("auc", 0.8)
        run.log_metric("auc", 0.85)  # no step: one past the last
        run.set_tag("note", "baseline")
        assert run.log_artifact(artifact) == ["weights.bin"]
    r = get_run(run.id, store=store)
    assert r.status == "finished" and r.error is None
    assert r.start_time <= r.end_time
    assert r.params == {"lr": 0.01, "layers": [64, 32], "epochs": 3}
    assert r.metrics == {"loss": 0.3, "auc": 0.85}
    assert [(p.step, p.value) for p in metric_history(run.id, "loss", store=store)] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert [p.step for p in metric_history(run.id, "auc", store=store)] == [0, 1]
    assert r.tags == {"team": "risk", "note": "baseline"}
    assert r.data_snapshot == "snap-1" and r.entrypoint == "pkg.train:main"
    (a,) = r.artifacts
    assert a.name == "weights.bin" and a.size == 1000
    assert store.blobs.read_bytes(a.sha256) == artifact.read_bytes()
    assert r.python.endswith(sys.version.split()[0])
    assert {"numpy", "msgspec", "loopserve"} <= set(r.packages)
    assert r.command[0] == sys.executable and r.platform


def test_an_exception_marks_the_run_failed_and_is_reraised(store):
    with pytest.raises(ZeroDivisionError):
        with start_run("fraud", store=store) as run:
            run.log_metric("loss", 1.0)
            1 / 0
    r = get_run(run.id, store=store)
    assert r.status == "failed"
    assert "ZeroDivisionError" in r.error and "division by zero" in r.error
    assert r.end_time is not None and r.metrics == {"loss": 1.0}


def test_code_version_is_the_git_sha_and_dirty_flag(tmp_path, store):
    repo = tmp_path / "repo"
    sha = git_repo(repo)
    with start_run("exp", store=store, cwd=repo) as run:
        pass
    code = get_run(run.id, store=store).code
    assert (code.git_sha, code.git_dirty) == (sha, False)
    (repo / "untracked.csv").write_text("a,b\n")  # untracked files do not make the tree dirty
    assert code_version(repo).git_dirty is False
    (repo / "train.py").write_text("# edited\n")
    assert code_version(repo).git_dirty is True
    outside = tmp_path / "plain"
    outside.mkdir()
    with start_run("exp", store=store, cwd=outside) as run:
        pass
    code = get_run(run.id, store=store).code
    assert (code.git_sha, code.git_dirty, code.git_root) == (None, None, None)


def test_list_get_by_prefix_and_compare(store):
    ids = []
    for lr in (0.1, 0.2):
        with start_run("a", params={"lr": lr, "seed": 0}, store=store) as run:
            run.log_metric("loss", lr * 10)
            run.log_metric("acc", 0.9)
        ids.append(run.id)
    with start_run("b", store=store) as other:
        pass
    assert [r.id for r in list_runs("a", store=store)] == ids[::-1]  # newest first
    assert {r.id for r in list_runs(store=store)} == {*ids, other.id}
    assert get_run(ids[0][:6], store=store).id == ids[0]
    c = compare_runs(ids, store=store)
    assert c.params == {"lr": [0.1, 0.2], "seed": [0, 0]}
    assert c.differing_params == ["lr"] and c.differing_metrics == ["loss"]
    assert c.metrics["acc"] == [0.9, 0.9]


def test_bad_input_is_refused_with_what_was_expected(store):
    with pytest.raises(RunNotFound, match="no run with id 'nope'"):
        get_run("nope", store=store)
    with pytest.raises(InvalidName, match="invalid experiment name"):
        with start_run("../evil", store=store):
            pass
    with pytest.raises(TrackingError, match="invalid entrypoint 'train'.*module:function"):
        with start_run("x", store=store, entrypoint="train"):
            pass
    with start_run("x", params={"lr": 0.1}, store=store) as run:
        run.log_param("lr", 0.1)  # the same value again is fine
        with pytest.raises(TrackingError, match="param 'lr' is already 0.1"):
            run.log_param("lr", 0.2)
        with pytest.raises(TrackingError, match="not JSON-encodable"):
            run.log_param("f", object())
        with pytest.raises(TrackingError, match="NaN"):
            run.log_metric("m", float("nan"))
        with pytest.raises(TrackingError, match="not a number"):
            run.log_metric("m", "high")
        with pytest.raises(TrackingError, match="does not exist"):
            run.log_artifact("/no/such/file")
    assert issubclass(RunNotFound, LoopserveError) and issubclass(InvalidTimestamp, LoopserveError)


def test_timestamps_are_parsed_to_one_sortable_utc_form():
    assert parse_time("2026-11-03") == "2026-11-03T00:00:00.000000+00:00"
    assert parse_time("2026-11-03T12:00:00Z") == "2026-11-03T12:00:00.000000+00:00"
    assert parse_time("2026-11-03 13:00:00+01:00") == "2026-11-03T12:00:00.000000+00:00"
    assert parse_time(dt.datetime(2026, 11, 3, 12)) == "2026-11-03T12:00:00.000000+00:00"
    assert parse_time(0) == "1970-01-01T00:00:00.000000+00:00"
    assert parse_time("1.5") == "1970-01-01T00:00:01.500000+00:00"
    with pytest.raises(InvalidTimestamp, match="invalid timestamp 'yesterday': expected an ISO-8601"):
        parse_time("yesterday")


@pytest.mark.parametrize("value", [1e20, float("nan"), -1e15])
def test_out_of_range_unix_times_are_invalid_timestamps(value):
    with pytest.raises(InvalidTimestamp, match="expected unix seconds"):
        parse_time(value)
