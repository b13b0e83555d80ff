"""The dynamic batcher's rules, observed through the batch-size histogram."""

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from loopserve import Model

from conftest import vector_config


def doubling(seen=None, delay=0.0):
    """A model y = 2x that records the batch sizes it sees."""

    def fn(inputs):
        x = inputs["x"]
        if seen is not None:
            seen.append(x.shape[0])
        if delay:
            time.sleep(delay)
        return {"y": x * 2}

    return fn


async def burst(model, n, rows=1, **kw):
    xs = [np.full((rows, 4), i, np.float32) for i in range(n)]
    outs = await asyncio.gather(*(model.infer({"x": x}, **kw) for x in xs))
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x * 2)
    return outs


# Tests that pin batch sizes give the batcher a delay far longer than the burst takes to submit
# (one event-loop turn): a full batch dispatches at once whatever the delay, and a partial one
# waits it out, so a thread descheduled mid-burst on a loaded machine cannot split a batch.
LONG_DELAY_US = 60_000_000  # never waited out: every batch in the test is full or preferred
PARTIAL_DELAY_US = 500_000  # waited out once by the test's last, partial batch


def test_64_concurrent_requests_form_batches_of_32():
    seen = []
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=32, max_queue_delay_us=LONG_DELAY_US)) as m:
        asyncio.run(burst(m, 64))
        assert seen == [32, 32]
        stats = m.stats()
    assert stats.batch_size_histogram == {32: 2}
    assert stats.success == 64 and stats.inference_count == 64 and stats.execution_count == 2


def test_partial_batch_runs_when_the_delay_elapses():
    seen = []
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=32, max_queue_delay_us=PARTIAL_DELAY_US)) as m:
        asyncio.run(burst(m, 5))
        stats = m.stats()
    assert seen == [5]
    assert stats.delayed_batches == 1, "a partial batch waits out the delay, then runs"


def test_preferred_batch_size_dispatches_without_waiting():
    seen = []
    config = vector_config(max_batch_size=32, max_queue_delay_us=5_000_000, preferred_batch_sizes=[8])
    with Model.from_callable(doubling(seen), config) as m:
        asyncio.run(burst(m, 8))
        stats = m.stats()
    assert seen == [8]
    assert stats.delayed_batches == 0, "a preferred size must not wait out the 5 s delay"


def test_a_batch_never_splits_a_request_and_rows_go_back_to_their_owner():
    seen = []
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=10, max_queue_delay_us=PARTIAL_DELAY_US)) as m:

        async def main():
            xs = [np.random.rand(r, 4).astype(np.float32) for r in [3, 4, 5, 2, 6, 1]]
            outs = await asyncio.gather(*(m.infer({"x": x}) for x in xs))
            for x, out in zip(xs, outs):
                np.testing.assert_array_equal(out["y"], x * 2)

        asyncio.run(main())
    assert sum(seen) == 21 and max(seen) <= 10
    assert seen[0] == 7, "3 + 4 fit in 10; the request of 5 rows must not be split"


def test_higher_priority_runs_first():
    order = []
    gate, entered = threading.Event(), threading.Event()

    def fn(inputs):
        entered.set()
        assert gate.wait(60)
        order.extend(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=1, priority_levels=2, default_priority_level=2)) as m:

        async def main():
            first = m.infer({"x": np.full((1, 4), -1, np.float32)})  # occupies the only instance
            assert await asyncio.to_thread(entered.wait, 60)
            low = [m.infer({"x": np.full((1, 4), i, np.float32)}, priority=2) for i in range(3)]
            high = [m.infer({"x": np.full((1, 4), 100 + i, np.float32)}, priority=1) for i in range(3)]
            gate.set()
            await asyncio.gather(first, *low, *high)

        asyncio.run(main())
    assert order == [-1, 100, 101, 102, 0, 1, 2]


def test_adaptive_delay_stops_charging_a_lone_client():
    # inline_budget_us=0: every batch goes through a worker, which is where the delay applies.
    config = vector_config(max_batch_size=32, max_queue_delay_us=300_000, inline_budget_us=0)
    with Model.from_callable(doubling(), config) as m:

        async def lone_client():
            for _ in range(6):
                await m.infer({"x": np.ones((1, 4), np.float32)})

        asyncio.run(lone_client())
        # The first two waits are paid; once they gained nothing, the delay is skipped.
        stats = m.stats()
        assert (stats.execution_count, stats.delayed_batches) == (6, 2)
        # A burst still batches: overlapping requests restore the wait.
        asyncio.run(burst(m, 16))
        after = m.stats()
        assert after.execution_count - stats.execution_count <= 2
        assert after.delayed_batches - stats.delayed_batches == 1


def test_fixed_delay_when_adaptive_is_off():
    config = vector_config(max_batch_size=32, max_queue_delay_us=20_000, adaptive_queue_delay=False)
    with Model.from_callable(doubling(), config) as m:

        async def lone_client():
            for _ in range(4):
                await m.infer({"x": np.ones((1, 4), np.float32)})

        asyncio.run(lone_client())
        stats = m.stats()
    assert (stats.execution_count, stats.delayed_batches, stats.inline_runs) == (4, 4, 0)


def concurrency_meter(barrier=None):
    """A model y = 2x that records the most calls it saw running at once; with a barrier, each
    call waits (GIL released, as torch and onnxruntime compute) until that many run together."""
    lock, running, most = threading.Lock(), [0], [0]

    def fn(inputs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            if barrier is not None:
                barrier.wait()  # raises BrokenBarrierError (the batch fails) unless all arrive
            else:
                time.sleep(0.05)  # long enough for another call to overlap, were that possible
        finally:
            with lock:
                running[0] -= 1
        return {"y": inputs["x"] * 2}

    return fn, most


def test_instances_run_batches_concurrently():
    one_fn, one_most = concurrency_meter()
    four_fn, four_most = concurrency_meter(threading.Barrier(4, timeout=60))
    with Model.from_callable(one_fn, vector_config(max_batch_size=1)) as one, \
            Model.from_callable(four_fn, vector_config(max_batch_size=1, instances=4)) as four:
        asyncio.run(burst(one, 4))
        asyncio.run(burst(four, 4))  # completes only if the four batches run at once
        assert one.stats().execution_count == four.stats().execution_count == 4
    assert one_most == [1] and four_most == [4]


def test_the_event_loop_is_free_while_requests_wait():
    """The model finishes only after the loop has ticked 10 times while it runs: were the loop
    blocked waiting for it, the model would give up and fail the request."""
    ticked = threading.Event()

    def fn(inputs):
        if not ticked.wait(60):
            raise RuntimeError("the event loop did not tick while the model ran")
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=8)) as m:

        async def main():
            async def ticker():
                for _ in range(10):
                    await asyncio.sleep(0.001)
                ticked.set()

            t = asyncio.create_task(ticker())
            out = await m.infer({"x": np.ones((1, 4), np.float32)})
            await t
            return out

        np.testing.assert_array_equal(asyncio.run(main())["y"], 2)


def test_one_wakeup_per_batch():
    from loopserve.serving.model import _channels

    with Model.from_callable(doubling(), vector_config(max_batch_size=32, max_queue_delay_us=LONG_DELAY_US)) as m:

        async def main():
            await burst(m, 64)
            return _channels[asyncio.get_running_loop()].wakeups

        assert asyncio.run(main()) <= 2


def test_model_without_batch_dimension_runs_each_request_alone():
    seen = []

    def fn(inputs):
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=0, width=3)) as m:
        out = m.infer_sync({"x": np.arange(3, dtype=np.float32)})
        np.testing.assert_array_equal(out["y"], [0, 2, 4])
        with pytest.raises(Exception, match=r"expects \[3\]"):
            m.infer_sync({"x": np.ones((1, 3), np.float32)})
    assert seen == [(3,)]


def test_a_lone_request_to_a_quick_model_runs_on_the_callers_thread():
    threads = []

    def fn(inputs):
        threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2}

    # Quick against a budget of 1 s: a call of microseconds descheduled for a while on a loaded
    # machine is still quick (the default budget, 100 us, is one preemption away from "slow").
    with Model.from_callable(fn, vector_config(max_batch_size=32, max_queue_delay_us=5_000,
                                               inline_budget_us=1_000_000)) as m:

        async def lone_client():
            for i in range(20):
                out = await m.infer({"x": np.full((1, 4), i, np.float32)})
                np.testing.assert_array_equal(out["y"], 2 * i)

        asyncio.run(lone_client())
        stats = m.stats()
    # Once the first batch showed the model is quick, no hand-off to a worker at all.
    assert stats.inline_runs >= 10
    assert threads[-1] == threading.get_ident()
    assert threads[0] != threading.get_ident()


def test_a_slow_model_is_never_run_on_the_callers_thread():
    with Model.from_callable(doubling(delay=0.002), vector_config(max_batch_size=32, max_queue_delay_us=1_000,
                                                                  inline_budget_us=500)) as m:

        async def lone_client():
            for _ in range(8):
                await m.infer({"x": np.ones((1, 4), np.float32)})

        asyncio.run(lone_client())
        assert m.stats().inline_runs == 0


def test_bytes_tensors_batch_and_scatter_to_their_owners():
    from loopserve import DynamicBatching, ModelConfig, TensorConfig

    seen = []

    def shout(inputs):
        s = inputs["s"]
        seen.append(s.shape[0])
        return {"u": np.vectorize(lambda b: b.upper() + b"!", otypes=[object])(s)}

    config = ModelConfig(name="shout", max_batch_size=16, inputs=[TensorConfig("s", "BYTES", [2])],
                         outputs=[TensorConfig("u", "BYTES", [2])],
                         dynamic_batching=DynamicBatching(max_queue_delay_us=PARTIAL_DELAY_US))
    with Model.from_callable(shout, config) as m:

        async def main():
            reqs = [np.array([[f"r{i}-{j}".encode() * (j + 1), "é".encode()] for j in range(i % 3 + 1)], dtype=object)
                    for i in range(6)]
            outs = await asyncio.gather(*(m.infer({"s": r}) for r in reqs))
            for r, out in zip(reqs, outs):
                assert out["u"].tolist() == [[b.upper() + b"!" for b in row] for row in r.tolist()]

        asyncio.run(main())
    assert seen == [12], "six requests of 1-3 rows: one batch"


def test_a_deferred_request_its_submitter_never_runs_is_run_by_a_worker():
    """An event loop may close before the turn on which it would have run its batch."""
    from loopserve import _core

    with Model.from_callable(doubling(), vector_config(max_batch_size=8, inline_budget_us=1_000_000)) as m:
        x = np.ones((1, 4), np.float32)
        m.infer_sync({"x": x})  # now the batcher knows the model is quick (under the budget)
        queue = _core.CompletionQueue()
        assert m._batcher.submit({"x": x}, 7, queue, 0, -1, True) == _core.SUBMIT_DEFERRED
        deadline = time.monotonic() + 30  # generous: the worker takes it after a 2 ms grace
        done = []
        while not done and time.monotonic() < deadline:
            time.sleep(0.005)
            done = queue.drain()
        assert [(token, status) for token, status, _ in done] == [(7, _core.STATUS_OK)]
        np.testing.assert_array_equal(done[0][2][0], x * 2)


def test_a_model_whose_worker_threads_cannot_start_fails_to_load_and_the_process_lives():
    """Out of threads part-way through a model's instances (here: address space for their
    stacks), the load fails with a clear error; the process does not abort (a joinable
    std::thread destroyed while the constructor unwinds would terminate it)."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        from conftest import vector_config
        from loopserve import Model
        with Model.from_callable(lambda inputs: {"y": inputs["x"]}, vector_config()) as m:  # everything imported, warm
            m.infer_sync({"x": np.ones((1, 4), np.float32)})
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), resource.RLIM_INFINITY))
        try:
            Model.from_callable(lambda inputs: {"y": inputs["x"]}, vector_config(instances=64))  # 64 stacks of 8 MiB
        except Exception as e:
            print("refused:", e)
        else:
            print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "could not start the worker threads of 64 instances" in done.stdout, done.stdout + done.stderr[-2000:]
