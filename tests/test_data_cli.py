"""`loopserve data ...` through the real CLI entry point, on real files and a real store."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loopserve.cli import main

VENV_LOOPSERVE = Path(sys.executable).parent / "loopserve"


def write_parquet(path, n=2000, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    pq.write_table(pa.table({"amount": rng.uniform(0, 100, n) + shift,
                             "country": rng.choice(["DE", "FR", "US"], n)}), path)
    return path


def test_snapshot_list_show_schema_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich folds cells to the terminal's width
    store = str(tmp_path / "store")
    ref = write_parquet(tmp_path / "ref.parquet")
    assert main(["data", "snapshot", str(ref), "--name", "ref", "--store", store]) == 0
    out = capsys.readouterr().out
    snapshot_id = out.split()[1]
    assert len(snapshot_id) == 64 and "rows 2000" in out and "0 reused, 1 new" in out

    assert main(["data", "snapshot", str(ref), "--store", store]) == 0  # same data again
    assert snapshot_id in capsys.readouterr().out

    assert main(["data", "list", "--store", store]) == 0
    out = capsys.readouterr().out
    assert snapshot_id[:12] in out and "ref" in out and "2000" in out

    assert main(["data", "show", "ref", "--store", store]) == 0
    out = capsys.readouterr().out
    assert snapshot_id in out and "amount" in out and "double" in out and "DE" in out

    schema = tmp_path / "schema.yaml"
    assert main(["data", "schema", snapshot_id[:8], "-o", str(schema), "--store", store]) == 0
    assert "categories" in schema.read_text()

    good = write_parquet(tmp_path / "good.parquet", seed=1)
    assert main(["data", "validate", str(good), "--schema", str(schema), "--store", store]) == 0
    assert "passed" in capsys.readouterr().out
    assert main(["data", "validate", str(good), "--against", "ref", "--store", store]) == 0
    capsys.readouterr()

    bad = write_parquet(tmp_path / "bad.parquet", seed=2, shift=200.0)
    assert main(["data", "validate", str(bad), "--against", "ref", "--store", store]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "column 'amount': 2000 values out of range [" in captured.err


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["data", "show", "nope", "--store", store]) == 2
    assert "loopserve data: no snapshot 'nope'" in capsys.readouterr().err
    assert main(["data", "snapshot", str(tmp_path / "missing.csv"), "--store", store]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("columns: [{name: a, bogus: 1}]\n")
    (tmp_path / "d.csv").write_text("a\n1\n")
    assert main(["data", "validate", str(tmp_path / "d.csv"), "--schema", str(tmp_path / "s.yaml"),
                 "--store", store]) == 2
    assert "unknown field `bogus`" in capsys.readouterr().err


def test_installed_command_in_a_subprocess(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    env = {**os.environ, "LOOPSERVE_STORE": str(tmp_path / "envstore")}
    done = subprocess.run([str(VENV_LOOPSERVE), "data", "snapshot", str(path), "--name", "tiny"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rows 2" in done.stdout
    assert (tmp_path / "envstore" / "loopserve.db").exists()  # the store root came from $LOOPSERVE_STORE
