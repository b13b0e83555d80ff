"""Thread budgets for the model executors: how many intra-op threads each runtime gets, so that
executors and the HTTP front ends do not fight over the same cores.

`threads: auto` (the default) divides the cores the process may use among the executors: every
instance of every loaded model runs batches on a thread of its own, and each such batch may use
`intra_op` threads. So

    intra_op = max(1, cores usable // executors)

Cores usable: the CPUs in the process's affinity mask, capped by the cgroup CPU quota (v2
`cpu.max`, v1 `cpu.cfs_quota_us`, the tightest along the cgroup's path), rounded down: a quota of
1.5 cores gives 1, since a second busy thread would be throttled. Versions of one model share its
traffic, so they count once.

Front ends keep no core, however many there are. What a front end uses follows its load, and a
core set aside for it sits idle whenever it waits on the executors; an intra-op helper that finds
no free core costs little, since the calling thread runs the batch's shares itself and takes back
those no helper has started (onnxruntime's thread pool revokes them). A tiny model's operators are
mostly too small to split at all. Measured on 2 cores with two front-end processes
(bench/threads.py; README, Threads): on a quiet box 2 intra-op threads served the heavy MLP 18-32%
more rows than 1 at 64 clients and as many at 128; on the same box loaded by other work, 1 was
never ahead of 2 by more than the noise. With two instances, 1 thread each (this rule) was the best
or within 5% of it in every row, 2 each no better.

What did cost cores is spinning: onnxruntime's idle threads spin by default, burning the cores
the front end needs. Spinning is off unless the config asks for it.

torch's intra-op thread count is process-wide (`torch.set_num_threads`): every torch model sets
it to its budget as it loads. Under `auto` all executors get the same share, and the share only
shrinks as models load, so the last value is right for all of them. An explicit count in a torch
model's config sets it for every torch model in the process. torch's OpenMP threads spin as
OMP_WAIT_POLICY (read when torch is imported) says; loopserve cannot change that later.

The census of executors is process-wide, like torch's setting: the server announces the models
it is about to load (`expect`), and every model that loads enters it. Sessions keep the thread
count they were made with, so a model loaded after start-up does not shrink the budgets of those
already serving; an unloaded model keeps its place until the process restarts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from loopserve.config import ModelConfig

log = logging.getLogger("loopserve.threads")


# -- the cores this process may use ---------------------------------------------------------


@dataclass(frozen=True)
class CpuQuota:
    cores: float  # quota / period
    source: str  # the file it was read from


@dataclass(frozen=True)
class Cores:
    """The CPUs this process may run on, and the CPU time its cgroup allows."""

    affinity: int  # CPUs in the affinity mask (cpusets included)
    quota: CpuQuota | None  # None: no cgroup CPU limit

    @property
    def usable(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota.cores)))

    def describe(self) -> str:
        limit = (f"cgroup quota {self.quota.cores:g} cores ({self.quota.source})" if self.quota
                 else "no cgroup CPU quota")
        return f"{self.usable} cores usable: {self.affinity} CPUs in the affinity mask, {limit}"


def usable_cores(root: Path = Path("/")) -> Cores:
    """Affinity and cgroup quota of this process; `root` lets tests point the cgroup files elsewhere."""
    return Cores(len(os.sched_getaffinity(0)), cgroup_cpu_quota(root))


def cgroup_cpu_quota(root: Path = Path("/")) -> CpuQuota | None:
    """The tightest CPU quota on this process's cgroup path, cgroup v2 and v1 both (a hybrid
    host mounts both); None where no quota is set or the files are not there."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in memberships:
        if line.count(":") < 2:
            continue
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            quotas += _quotas_on_path(root, mounts, path, lambda fs, opts: fs == "cgroup2", _read_v2)
        elif "cpu" in controllers.split(","):
            quotas += _quotas_on_path(root, mounts, path,
                                      lambda fs, opts: fs == "cgroup" and "cpu" in opts.split(","), _read_v1)
    return min(quotas, key=lambda q: q.cores, default=None)


def _quotas_on_path(root: Path, mounts: list[str], cgroup_path: str, is_mount, read) -> list[CpuQuota]:
    """The quotas set on `cgroup_path` and its ancestors, in every matching cgroup mount."""
    found = []
    for line in mounts:
        # mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3 or not is_mount(tail[0], tail[2]):
            continue
        mount_root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        relative = os.path.relpath(cgroup_path, mount_root)
        if relative.startswith(".."):  # the cgroup is outside this mount (another namespace's view)
            relative = "."
        top = root / mount_point.lstrip("/")
        directory = Path(os.path.normpath(top / relative))
        while True:
            quota = read(directory)
            if quota is not None:
                found.append(quota)
            if directory == top or top not in directory.parents:
                break
            directory = directory.parent
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _read_v2(directory: Path) -> CpuQuota | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return CpuQuota(int(quota) / int(period), str(directory / "cpu.max"))


def _read_v1(directory: Path) -> CpuQuota | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:  # -1: no limit
        return None
    return CpuQuota(quota / period, str(directory / "cpu.cfs_quota_us"))


# -- the budget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadBudget:
    """What one model's executors run with, and the figures it came from."""

    requested: str | int  # the config's `threads`: "auto", 0 (the runtime's default) or a count
    intra_op: int  # threads per executor (per batch in flight); 0: the runtime's default
    spinning: bool | None  # idle threads spin; None: the runtime's default
    auto_intra_op: int  # what `auto` gives here (the same as intra_op under auto)
    cores: Cores
    front_ends: int
    executors: int  # executor threads in the process: instances of every model
    model_instances: int

    def why(self) -> str:
        auto = (f"cores usable {self.cores.usable} // executors {self.executors} "
                f"(this model's instances: {self.model_instances}); {self.front_ends} front end(s) "
                f"keep no core (they take CPU as load brings it)")
        if self.requested == "auto":
            chosen = f"auto: {self.intra_op} per executor = {auto}"
        elif self.requested == 0:
            chosen = f"threads 0: the runtime's own default (auto would give {self.auto_intra_op})"
        else:
            chosen = f"threads {self.intra_op} from the config (auto would give {self.auto_intra_op} = {auto})"
        spinning = {None: "runtime default", True: "on", False: "off"}[self.spinning]
        return f"{chosen}; spinning {spinning}; {self.cores.describe()}"

    def parameters(self) -> dict[str, dict[str, str]]:
        """Triton model-config `parameters` (string values): onnxruntime backend's names for the
        thread count, loopserve's for the rest."""
        spinning = {None: "default", True: "true", False: "false"}[self.spinning]
        values = {
            "intra_op_thread_count": self.intra_op,
            "thread_budget": self.requested,
            "thread_spinning": spinning,
            "thread_budget.cores_usable": self.cores.usable,
            "thread_budget.front_ends": self.front_ends,
            "thread_budget.executors": self.executors,
            "thread_budget.why": self.why(),
        }
        return {k: {"string_value": str(v)} for k, v in values.items()}


def plan(threads: str | int, spinning: bool | None, *, cores: Cores, front_ends: int = 1, executors: int = 1,
         model_instances: int = 1) -> ThreadBudget:
    """The budget for a model whose config says `threads` and `thread_spinning`: the executors
    share the usable cores evenly (at least one thread each); `front_ends` is reported, not
    subtracted (the module's docstring says why)."""
    auto = max(1, cores.usable // max(1, executors))
    intra_op = auto if threads == "auto" else int(threads)
    if spinning is None and threads != 0:
        spinning = False  # 0 leaves everything to the runtime, spinning included
    return ThreadBudget(threads, intra_op, spinning, auto, cores, front_ends, executors, model_instances)


class ExecutorCensus:
    """The executors of this process by model, and its front ends: what `auto` divides the cores
    among. Thread-safe (models load on any thread)."""

    def __init__(self, cores: Cores | None = None):
        self._lock = threading.Lock()
        self._cores = cores
        self._front_ends = 1
        self._instances: dict[str, int] = {}

    def expect(self, instances_by_model: Mapping[str, int], front_ends: int = 1) -> None:
        """Announces the models about to load (name -> instances) and the HTTP front-end
        processes, so the first model's budget already counts the last one."""
        with self._lock:
            self._front_ends = front_ends
            self._instances.update(instances_by_model)

    def budget(self, config: ModelConfig) -> ThreadBudget:
        """`config`'s budget, with `config`'s model entered into the census."""
        with self._lock:
            if self._cores is None:
                self._cores = usable_cores()
            self._instances[config.name] = config.instances
            budget = plan(config.threads, config.thread_spinning, cores=self._cores, front_ends=self._front_ends,
                          executors=sum(self._instances.values()), model_instances=config.instances)
        log.info("thread budget", extra={"model": config.name, "intra_op_threads": budget.intra_op,
                                         "spinning": budget.spinning, "why": budget.why()})
        return budget


CENSUS = ExecutorCensus()


def budget_for(config: ModelConfig) -> ThreadBudget:
    """The budget a backend opens `config`'s model with (from the process-wide census)."""
    return CENSUS.budget(config)


def expect_repository_models(repository_root: str | Path | None, names: Iterable[str],
                             registry_names: Iterable[str] = (), front_ends: int = 1) -> None:
    """Announces what the server loads at start: each named model's `instances` from its config
    file (1 where it cannot be read: its load reports why), registry models at 1 each."""
    from loopserve.config import load_config
    from loopserve.errors import ConfigError
    from loopserve.serving.model import CONFIG_NAMES  # not at the top: it imports the backends, which import us

    instances = {name: 1 for name in registry_names}
    for name in names:
        directory = Path(repository_root or ".") / name
        config_file = next((directory / n for n in CONFIG_NAMES if (directory / n).is_file()), None)
        try:
            instances[name] = load_config(config_file).instances if config_file else 1
        except ConfigError:
            instances[name] = 1
    CENSUS.expect(instances, front_ends)
