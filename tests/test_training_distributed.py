"""Data-parallel training: `torchrun` with 2 CPU processes (gloo) reaches the validation AUC of 1 process."""

import json
import os
import subprocess
import sys

from conftest import free_port

CONFIG = """
data:
  generator: {seed: 3, start: 0, rows: 6000}
model:
  hidden: [32, 16]
  log_features: [amount, account_age_days, distance_from_home_km, minutes_since_last_txn]
epochs: 2
batch_size: 128
seed: 7
output: {dir: OUT, name: fraud}
export: {torchscript: false}
tracking: {enabled: false}
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on shared cores
    env.pop("WORLD_SIZE", None)
    return env


def _train(tmp_path, name, prefix):
    (tmp_path / f"{name}.yaml").write_text(CONFIG.replace("OUT", name))
    command = [*prefix, "-m", "loopserve.cli", "train", str(tmp_path / f"{name}.yaml"), "--quiet", "--json"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # only rank 0 reports
    return json.loads(lines[0])


def test_two_processes_reach_the_auc_of_one(tmp_path):
    one = _train(tmp_path, "one", [sys.executable])
    two = _train(tmp_path, "two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                   "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}"])
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["rows_train"] == one["rows_train"] == 4800
    assert one["metrics"]["val_auc"] > 0.7
    # Each process takes half of every global batch: the same steps as one process, up to float order.
    assert abs(two["metrics"]["val_auc"] - one["metrics"]["val_auc"]) <= 0.02, (one["metrics"], two["metrics"])
    assert abs(two["metrics"]["val_loss"] - one["metrics"]["val_loss"]) <= 1e-3, (one["metrics"], two["metrics"])
    assert two["published"] and (tmp_path / "two" / "fraud" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "two" / "fraud" / "2").exists()  # rank 1 published nothing
