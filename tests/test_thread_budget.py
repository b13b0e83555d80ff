"""Thread budgets: the cores a process may use (affinity, cgroup quotas read from real files),
the budget `threads: auto` derives from them, the config values it accepts, and what the
runtimes and the config route really get."""

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from loopserve import Model
from loopserve.config import decode_config
from loopserve.errors import ConfigError
from loopserve.thread_budget import (Cores, CpuQuota, ExecutorCensus, cgroup_cpu_quota, plan, usable_cores)
from loopserve.demo.hotswap import wait_ready

from conftest import free_port

# -- cgroup files -------------------------------------------------------------------------

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_CPU_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
V1_MEMORY_MOUNT = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
HYBRID_V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"


def fake_root(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A directory laid out like / for the files cgroup_cpu_quota reads."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


def test_cgroup_v2_takes_the_tightest_quota_along_the_path(tmp_path):
    root = fake_root(tmp_path, "0::/kubepods/pod1/app\n", V2_MOUNT, {
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "150000 100000\n",  # the pod: 1.5 cores
        "sys/fs/cgroup/kubepods/pod1/app/cpu.max": "max 100000\n",  # the container: no limit of its own
    })
    quota = cgroup_cpu_quota(root)
    assert quota.cores == 1.5
    assert quota.source == str(root / "sys/fs/cgroup/kubepods/pod1/cpu.max")
    assert Cores(affinity=8, quota=quota).usable == 1  # rounded down: a second thread would be throttled


def test_cgroup_v2_in_a_namespace_reads_the_mount_root(tmp_path):
    # Inside a container with its own cgroup namespace the process sits at "/" of its mount.
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_cpu_quota(root).cores == 2.0
    assert Cores(affinity=16, quota=cgroup_cpu_quota(root)).usable == 2
    assert Cores(affinity=1, quota=cgroup_cpu_quota(root)).usable == 1  # affinity is tighter


def test_cgroup_v2_without_a_quota(tmp_path):
    root = fake_root(tmp_path, "0::/user.slice\n", V2_MOUNT, {"sys/fs/cgroup/user.slice/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert Cores(affinity=4, quota=None).usable == 4


def test_cgroup_v1_cpu_controller_and_an_escaped_mount_point(tmp_path):
    cgroup = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    root = fake_root(tmp_path, cgroup, V1_MEMORY_MOUNT + V1_CPU_MOUNT, {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/memory/docker/abc/cpu.cfs_quota_us": "100000\n",  # not the cpu controller: ignored
    })
    assert cgroup_cpu_quota(root).cores == 3.0

    spaced = tmp_path / "spaced"
    mount = "32 31 0:29 / /mnt/cpu\\040set rw - cgroup cgroup rw,cpu\n"
    root = fake_root(spaced, "4:cpu:/\n", mount, {"mnt/cpu set/cpu.cfs_quota_us": "50000\n",
                                                  "mnt/cpu set/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root).cores == 0.5
    assert Cores(affinity=2, quota=cgroup_cpu_quota(root)).usable == 1  # never below one


def test_cgroup_v1_unlimited_on_a_hybrid_host(tmp_path):
    # Both hierarchies mounted, the cpu controller on v1 without a quota, no cpu.max on v2.
    root = fake_root(tmp_path, "1:cpu:/\n0::/\n", V1_CPU_MOUNT.replace("cpu,cpuacct rw", "cpu rw") + HYBRID_V2_MOUNT, {
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    })
    (root / "sys/fs/cgroup/unified").mkdir(parents=True)
    assert cgroup_cpu_quota(root) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None


def test_this_machine(tmp_path):
    cores = usable_cores()
    assert cores.affinity == len(os.sched_getaffinity(0))
    if cores.quota is None:
        assert cores.usable == cores.affinity
    else:  # read back the file it names
        text = Path(cores.quota.source).read_text().split()
        if cores.quota.source.endswith("cpu.max"):
            assert cores.quota.cores == int(text[0]) / int(text[1])
        else:
            period = int((Path(cores.quota.source).parent / "cpu.cfs_period_us").read_text())
            assert cores.quota.cores == int(text[0]) / period
        assert cores.usable == max(1, min(cores.affinity, math.floor(cores.quota.cores)))
    assert 1 <= cores.usable <= os.cpu_count()
    # And a process pinned to one CPU sees one.
    pinned = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from loopserve.thread_budget import usable_cores
        print(usable_cores().affinity, usable_cores().usable)
    """)], capture_output=True, text=True, timeout=60)
    assert pinned.stdout.split() == ["1", "1"], pinned.stderr


# -- the budget ---------------------------------------------------------------------------


def cores(n: int, quota: float | None = None) -> Cores:
    return Cores(n, CpuQuota(quota, "cpu.max") if quota else None)


@pytest.mark.parametrize("usable, front_ends, executors, expected", [
    (2, 1, 1, 2),
    (2, 2, 1, 2),  # two front-end processes keep no core either (bench/threads.py: 2 threads no worse than 1)
    (2, 1, 2, 1),  # two instances on two cores: one thread each
    (16, 1, 3, 5),  # three instances (of one model or several) share the cores
    (16, 8, 2, 8),  # eight front-end processes: the executors still share all sixteen
    (16, 2, 1, 16),
    (16, 1, 40, 1),  # more executors than cores: one thread each, never zero
    (1, 1, 1, 1),
    (1, 4, 1, 1),
])
def test_auto_divides_the_usable_cores_among_the_executors(usable, front_ends, executors, expected):
    budget = plan("auto", None, cores=cores(usable), front_ends=front_ends, executors=executors)
    assert budget.intra_op == expected == budget.auto_intra_op
    assert budget.spinning is False
    assert f"auto: {expected} per executor = cores usable {usable} // executors {executors}" in budget.why()
    assert f"{front_ends} front end(s) keep no core" in budget.why()


def test_front_ends_are_reported_not_subtracted():
    one, eight = (plan("auto", None, cores=cores(16), front_ends=n, executors=3) for n in (1, 8))
    assert one.intra_op == eight.intra_op == 5
    assert eight.parameters()["thread_budget.front_ends"] == {"string_value": "8"}


def test_the_quota_caps_the_affinity():
    assert plan("auto", None, cores=cores(16, quota=4.0), front_ends=1).intra_op == 4
    assert plan("auto", None, cores=cores(16, quota=4.5), front_ends=2).intra_op == 4
    assert "cgroup quota 4 cores (cpu.max)" in plan("auto", None, cores=cores(16, quota=4.0)).why()


def test_a_count_is_taken_as_given_and_0_leaves_the_runtime_its_defaults():
    fixed = plan(3, None, cores=cores(16), front_ends=1, executors=5)
    assert (fixed.intra_op, fixed.spinning, fixed.auto_intra_op) == (3, False, 3)
    assert "threads 3 from the config (auto would give 3" in fixed.why()
    default = plan(0, None, cores=cores(2))
    assert (default.intra_op, default.spinning) == (0, None)
    assert "the runtime's own default" in default.why() and "spinning runtime default" in default.why()
    assert plan(0, False, cores=cores(2)).spinning is False
    assert plan("auto", True, cores=cores(2)).spinning is True  # the opt-in


def test_the_census_counts_the_announced_models_before_they_load():
    census = ExecutorCensus(cores(16))
    census.expect({"a": 1, "b": 2}, front_ends=1)
    config = decode_config(b"name: a\n", "yaml", "a/config.yaml")
    first = census.budget(config)
    assert (first.executors, first.intra_op) == (3, 5)  # 16 // 3
    # A model loaded later joins the census; one loaded again keeps its place.
    late = census.budget(decode_config(b"name: c\ninstances: 2\n", "yaml", "c/config.yaml"))
    assert (late.executors, late.intra_op, late.model_instances) == (5, 3, 2)  # 16 // 5
    assert census.budget(config).executors == 5


# -- the config ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, threads, spinning", [
    ("name: m", "auto", None), ("threads: auto", "auto", None), ("threads: 2", 2, None), ("threads: 0", 0, None),
    ("threads: 1\nthread_spinning: true", 1, True), ('{"threads": "auto", "thread_spinning": false}', "auto", False),
])
def test_config_accepts(text, threads, spinning):
    config = decode_config(text.encode(), "yaml", "m/config.yaml")
    assert (config.threads, config.thread_spinning) == (threads, spinning)


@pytest.mark.parametrize("text, fragments", [
    ("threads: many", ["m/config.yaml", "expected 'auto', a thread count, or 0", "got 'many'", "$.threads"]),
    ("threads: Auto", ["got 'Auto'"]),
    ("threads: -1", ["Expected `int` >= 0", "$.threads"]),
    ("threads: 1.5", ["Expected `int | str`, got `float`", "$.threads"]),
    ("thread_spinning: 1", ["Expected `bool | null`, got `int`", "$.thread_spinning"]),
])
def test_config_refuses(text, fragments):
    with pytest.raises(ConfigError) as e:
        decode_config(text.encode(), "yaml", "m/config.yaml")
    for f in fragments:
        assert f in str(e.value)


# -- what the runtimes get ----------------------------------------------------------------


@pytest.fixture
def onnx_dir(tmp_path, model_repo):
    def make(extra: str) -> Path:
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model_repo / "mlp_onnx", d)
        (d / "config.yaml").write_text((d / "config.yaml").read_text() + extra)
        return d
    return make


def session_threads(model: Model) -> tuple:
    """Read back from the onnxruntime session itself."""
    options = model.backend.session.get_session_options()
    spinning = []
    for pool in ("intra_op", "inter_op"):
        try:
            spinning.append(options.get_session_config_entry(f"session.{pool}.allow_spinning"))
        except Exception:  # onnxruntime raises when the entry was never set
            spinning.append(None)
    return options.intra_op_num_threads, options.inter_op_num_threads, *spinning


def test_onnxruntime_sessions_get_the_budget(onnx_dir):
    with Model.load(onnx_dir("")) as auto:
        budget = auto.backend.thread_budget
        assert budget.requested == "auto" and budget.intra_op >= 1
        assert session_threads(auto) == (budget.intra_op, 1, "0", "0")
    with Model.load(onnx_dir("threads: 2\nthread_spinning: true\n")) as fixed:
        assert session_threads(fixed) == (2, 1, "1", "1")
    with Model.load(onnx_dir("threads: 0\n")) as default:  # nothing set: onnxruntime decides
        assert session_threads(default) == (0, 0, None, None)


def test_torch_gets_the_budget_process_wide(model_repo, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        d = tmp_path / "pt2"
        shutil.copytree(model_repo / "mlp_pt2", d)
        (d / "config.yaml").write_text((d / "config.yaml").read_text() + "threads: 1\n")
        with Model.load(d) as model:
            assert torch.get_num_threads() == 1 == model.backend.thread_budget.intra_op
        (d / "config.yaml").write_text((d / "config.yaml").read_text() + "thread_spinning: true\n")
        with pytest.raises(ConfigError, match="thread_spinning applies to onnxruntime only"):
            Model.load(d)
    finally:
        torch.set_num_threads(before)


# -- what a user sees ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_the_served_config_and_the_start_up_log_show_the_budget(tmp_path, model_repo, workers):
    import tritonclient.http as triton

    repo = tmp_path / "models"
    shutil.copytree(model_repo / "mlp_onnx", repo / "one")
    shutil.copytree(model_repo / "mlp_onnx", repo / "two")
    (repo / "two" / "config.yaml").write_text((repo / "two" / "config.yaml").read_text() + "instances: 2\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loopserve.cli", "serve", "--model-repository", str(repo),
                             "--port", str(port), "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, proc)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        configs = {name: client.get_model_config(name) for name in ("one", "two")}
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    usable = usable_cores().usable
    # Front ends keep no core, one or two of them; the 1 + 2 instances are both counted from the start.
    expected = max(1, usable // 3)
    for name, config in configs.items():
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert params["intra_op_thread_count"] == str(expected)
        assert params["thread_budget"] == "auto" and params["thread_spinning"] == "false"
        assert params["thread_budget.cores_usable"] == str(usable)
        assert params["thread_budget.front_ends"] == str(workers) and params["thread_budget.executors"] == "3"
        assert (f"auto: {expected} per executor = cores usable {usable} // executors 3"
                in params["thread_budget.why"]), params["thread_budget.why"]
        assert f"{workers} front end(s) keep no core" in params["thread_budget.why"]
        assert config["input"][0]["data_type"] == "TYPE_FP32"  # still Triton's shape
    logged = [msgspec.json.decode(line) for line in err.splitlines() if line.startswith("{")]
    budgets = {e["model"]: e for e in logged if e["msg"] == "thread budget"}
    assert set(budgets) == {"one", "two"}, err
    assert budgets["two"]["intra_op_threads"] == expected and "cores usable" in budgets["two"]["why"]
