"""`loopserve runs`, `loopserve registry` and `loopserve reproduce` through the real CLI entry point."""

import subprocess

import pytest

from helpers_training import ENTRYPOINT, train
from loopserve.cli import main
from loopserve.registry import alias_history, get_version, register_model
from loopserve.store import Store
from loopserve.tracking import get_run, list_runs, start_run


@pytest.fixture
def store_root(store_location, monkeypatch):
    root = store_location  # a directory, then a postgresql:// URL: the CLI reads either from the variable
    monkeypatch.setenv("LOOPSERVE_STORE", root)
    monkeypatch.setenv("COLUMNS", "220")  # rich tables wide enough to keep ids on one line
    return root


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_runs_list_show_compare(store_root, capsys):
    ids = []
    with Store(store_root) as s:
        for lr in (0.1, 0.3):
            with start_run("fraud", params={"lr": lr, "depth": 4}, data_snapshot="snap-9", store=s) as run:
                run.log_metric("loss", 0.5, step=0)
                run.log_metric("loss", lr, step=1)
            ids.append(run.id)
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0 and ids[0] in out and ids[1] in out and "finished" in out and "snap-9" in out
    code, out, _ = run_cli(capsys, "runs", "show", ids[0][:6])
    assert code == 0 and f"run {ids[0]}" in out and "lr" in out and "0.1" in out and "loss" in out
    code, out, _ = run_cli(capsys, "runs", "compare", *ids)
    assert code == 0
    lines = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "≠" in lines["param lr"] and "0.1" in lines["param lr"] and "0.3" in lines["param lr"]
    assert "≠" not in lines["param depth"] and "≠" in lines["metric loss"]
    code, _, err = run_cli(capsys, "runs", "show", "ffffffff")
    assert code == 2 and "loopserve runs show: no run with id 'ffffffff'" in err


def test_registry_commands(store_root, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"v1")
    code, out, _ = run_cli(capsys, "registry", "register", "fraud", str(model), "--alias", "production",
                           "--metric", "auc=0.9", "--tag", "owner=risk", "--data", "snap-1")
    assert code == 0 and "registered fraud version 1 (production)" in out
    (model / "model.onnx").write_bytes(b"v2")
    code, out, _ = run_cli(capsys, "registry", "register", "fraud", str(model), "--parent", "1")
    assert code == 0 and "version 2" in out
    code, out, _ = run_cli(capsys, "registry", "list")
    assert code == 0 and "fraud" in out and "production→1" in out
    code, out, _ = run_cli(capsys, "registry", "list", "fraud")
    assert code == 0 and "auc=0.9" in out
    code, out, _ = run_cli(capsys, "registry", "show", "fraud@production")
    assert code == 0 and "fraud version 1" in out and "snap-1" in out and "owner" in out and "model.onnx" in out
    code, out, _ = run_cli(capsys, "registry", "show", "fraud@2")
    assert code == 0 and "parents" in out and "1" in out
    code, out, _ = run_cli(capsys, "registry", "alias", "fraud", "production", "2", "--reason", "better auc")
    assert code == 0 and "production → version 2 (was 1)" in out
    with Store(store_root) as s:
        moved_at = alias_history("fraud", store=s)[-1].set_at
    code, out, _ = run_cli(capsys, "registry", "rollback", "fraud")
    assert code == 0 and "rolled back to version 1 (was 2)" in out
    code, out, _ = run_cli(capsys, "registry", "history", "fraud", "--alias", "production")
    assert code == 0 and "rollback" in out and "better auc" in out
    code, out, _ = run_cli(capsys, "registry", "history", "fraud", "--at", moved_at)
    assert code == 0 and "production" in out and out.split("production")[-1].split()[1] == "2"
    code, out, _ = run_cli(capsys, "registry", "materialize", "fraud@production", "--dest", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "model.onnx").read_bytes() == b"v1"
    code, _, err = run_cli(capsys, "registry", "show", "nope@1")
    assert code == 2 and "no registered model named 'nope'" in err
    code, _, err = run_cli(capsys, "registry", "history", "fraud", "--at", "soon")
    assert code == 2 and "invalid timestamp 'soon'" in err
    code, _, err = run_cli(capsys, "registry", "alias", "fraud", "production", "9")
    assert code == 2 and "has no version 9" in err


def _train_and_register(store_root, repo, model_file, params):
    with Store(store_root) as s:
        with start_run("linreg", params=params, data_snapshot="snap-lin", entrypoint=ENTRYPOINT, store=s,
                       cwd=repo) as run:
            run.log_metrics(train(dict(params), "snap-lin", run))
        model_file.write_bytes(str(params).encode())
        return register_model("linreg", model_file, run_id=run.id, store=s).version


def test_reproduce_reruns_the_recorded_training_and_compares_metrics(store_root, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "train.py").write_text("# v1\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "v1")
    monkeypatch.chdir(repo)
    params = {"seed": 0, "lr": 0.05, "epochs": 40}
    version = _train_and_register(store_root, repo, tmp_path / "w.bin", params)
    with Store(store_root) as s:
        recorded = get_run(get_version("linreg", version, store=s).run_id, store=s)
    code, out, err = run_cli(capsys, "reproduce", f"linreg@{version}")
    assert code == 0, err
    assert "val_mse" in out and "train_mse" in out and "reproduced within tolerance" in out
    with Store(store_root) as s:
        (new,) = [r for r in list_runs("linreg", store=s) if r.tags.get("reproduces") == recorded.id]
    assert new.params == params and new.data_snapshot == "snap-lin" and new.tags["data_seen"] == "snap-lin"
    assert new.metrics == recorded.metrics and new.status == "finished"

    (repo / "train.py").write_text("# v2\n")  # uncommitted change: refused
    code, _, err = run_cli(capsys, "reproduce", f"linreg@{version}")
    assert code == 2 and "refusing to reproduce" in err and "uncommitted changes" in err and "--force" in err
    git(repo, "commit", "-qam", "v2")  # another commit: refused
    code, _, err = run_cli(capsys, "reproduce", f"linreg@{version}")
    assert code == 2 and f"ran at {recorded.code.git_sha[:12]}" in err
    code, out, _ = run_cli(capsys, "reproduce", f"linreg@{version}", "--force")
    assert code == 0 and "WARNING" in out and "reproduced within tolerance" in out

    noisy = _train_and_register(store_root, repo, tmp_path / "w2.bin", {**params, "jitter": True})
    code, out, _ = run_cli(capsys, "reproduce", f"linreg@{noisy}")
    assert code == 1 and "DIFFERS" in out and "NOT reproduced" in out
    code, out, _ = run_cli(capsys, "reproduce", f"linreg@{noisy}", "--tolerance", "0.5")
    assert code == 0

    with Store(store_root) as s:
        register_model("linreg", tmp_path / "w.bin", store=s)  # no run recorded
    code, _, err = run_cli(capsys, "reproduce", "linreg@latest")
    assert code == 2 and "has no recorded run" in err
