"""Per-version services attach through the repository's load and unload hooks."""

import textwrap
import time

import numpy as np

from loopserve.serving.repository import ModelRepository

CONFIG = """\
max_batch_size: 4
inputs: [{name: x, datatype: FP32, dims: [1]}]
outputs: [{name: y, datatype: FP32, dims: [1]}]
warmup_rows: [1]
"""


def write_version(model_dir, version):
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "model.py").write_text(textwrap.dedent(f"""
        def infer(inputs):
            return {{"y": inputs["x"] * 0 + {version}}}
    """))


def test_hooks_see_each_version_loaded_warm_and_retired_once(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    events = []

    def loaded(model, directory):
        # after warm-up (its batch ran), before it serves
        events.append(("load", model.version, directory, model.stats().inference_count))

    def unloaded(model):
        events.append(("unload", model.version, model.backend is not None))  # before it closes

    repository = ModelRepository(tmp_path, on_version_load=[loaded], on_version_unload=[unloaded])
    repository.load("m")
    assert events == [("load", 1, model_dir / "1", 1)]
    # the built-in services ran first: version 1 records predictions for feedback from the start
    assert 1 in repository.services.feedback.models["m"].tracks

    write_version(model_dir, 2)  # the default policy serves the latest version: 1 retires
    repository.load("m")
    assert events[1:] == [("load", 2, model_dir / "2", 1), ("unload", 1, True)]
    repository.load("m")  # nothing changed: the serving version is kept, no hook runs
    assert len(events) == 3
    assert repository.get("m").infer_sync({"x": np.ones((1, 1), np.float32)})["y"].tolist() == [[2.0]]

    repository.close()
    assert events[3:] == [("unload", 2, True)]


def test_unload_unroutes_a_model_before_its_versions_retire(tmp_path):
    """The routing table (the engine's native one follows on_route_change) stops naming a
    version before its unload hooks run and it closes: no request reaches a closing batcher."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    events = []
    repository = ModelRepository(tmp_path, on_version_unload=[lambda model: events.append(("retire", model.version))])
    repository.on_route_change.append(lambda router: events.append(("routes", sorted(router.versions))))
    repository.load("m")
    events.clear()
    repository.unload("m")
    assert events == [("routes", []), ("retire", 1)]


def test_retiring_versions_do_not_hold_up_loads(tmp_path):
    """Retirement (which waits for what a version had queued, here an unload hook that blocks
    until the test lets it go) runs on threads of its own: more retiring versions than the event
    loop's default thread pool has threads leave the loads of other models free."""
    import asyncio
    import os
    import threading

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    other = tmp_path / "b"
    other.mkdir()
    (other / "config.yaml").write_text(CONFIG)
    write_version(other, 1)
    release = threading.Event()
    retired = []

    def held(model):
        release.wait(120)
        retired.append(model.version)

    repository = ModelRepository(tmp_path, on_version_unload=[held])
    swaps = min(32, (os.cpu_count() or 1) + 4) + 1  # one more than asyncio's default pool has threads

    async def swaps_then_load():
        try:
            await asyncio.wait_for(repository.load_async("m"), timeout=60)
            for version in range(2, swaps + 2):
                write_version(model_dir, version)
                # the previous version retires, held
                await asyncio.wait_for(repository.load_async("m"), timeout=60)
            await asyncio.wait_for(repository.load_async("b"), timeout=60)
        finally:
            release.set()

    asyncio.run(swaps_then_load())
    deadline = time.monotonic() + 120
    while len(retired) < swaps:
        assert time.monotonic() < deadline, f"only {retired} retired"
        time.sleep(0.01)
    assert sorted(retired) == list(range(1, swaps + 1))
    repository.close()


def test_a_version_whose_files_changed_is_built_again_on_reload(tmp_path):
    """A reload with the same config keeps a version only while its directory is unchanged: a
    model file replaced in place, or a file added (a drift profile), builds it again."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    loaded = []
    repository = ModelRepository(tmp_path, on_version_load=[lambda model, directory: loaded.append(model)])
    x = np.ones((1, 1), np.float32)
    repository.load("m")
    repository.load("m")
    assert len(loaded) == 1, "nothing changed: the serving version is kept"
    (model_dir / "1" / "model.py").write_text("def infer(inputs):\n    return {'y': inputs['x'] * 0 + 100}\n")
    repository.load("m")
    assert len(loaded) == 2 and repository.get("m") is loaded[1]
    assert repository.get("m").infer_sync({"x": x})["y"].tolist() == [[100.0]]
    (model_dir / "1" / "notes.txt").write_text("a file the version's hooks may read\n")
    repository.load("m")
    assert len(loaded) == 3 and repository.get("m") is loaded[2]
    repository.close()


def test_a_load_refused_for_its_traffic_builds_nothing_and_says_why(tmp_path):
    """Traffic that the versions a load would serve cannot take (here weights naming a version the
    policy does not load) fails the load before anything is built, with its reason in the index;
    the serving version serves on."""
    import pytest

    from loopserve.errors import InvalidInput

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    events = []
    repository = ModelRepository(tmp_path, on_version_load=[lambda model, directory: events.append("load")],
                                 on_version_unload=[lambda model: events.append("unload")])
    repository.load("m")
    write_version(model_dir, 2)
    (model_dir / "config.yaml").write_text(CONFIG + "traffic: {weights: {2: 50, 9: 50}}\n")
    with pytest.raises(InvalidInput, match="no version 9 loaded"):
        repository.load("m")
    assert events == ["load"], "nothing was built for the refused load"
    states = {(s.version, s.state): s.reason for s in repository.index()}
    assert states[("1", "READY")] == "" and "no version 9 loaded" in states[("", "UNAVAILABLE")]
    assert repository.get("m").infer_sync({"x": np.ones((1, 1), np.float32)})["y"].tolist() == [[1.0]]
    repository.close()
