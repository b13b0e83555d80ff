"""The dynamic batcher's rules, observed through the batch-size histogram."""

import asyncio
import threading
import time

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


def test_64_concurrent_requests_form_batches_of_32():
    seen = []
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=32, max_queue_delay_us=200_000)) as m:
        asyncio.run(burst(m, 64))
        assert seen == [32, 32]
        stats = m.stats()
    assert stats.batch_size_histogram == {32: 2}
    assert stats.success == 64 and stats.inference_count == 64 and stats.execution_count == 2


def test_partial_batch_runs_when_the_delay_elapses():
    seen = []
    delay_us = 50_000
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=32, max_queue_delay_us=delay_us)) as m:
        start = time.perf_counter()
        asyncio.run(burst(m, 5))
        elapsed = time.perf_counter() - start
    assert seen == [5]
    assert elapsed >= delay_us / 1e6 * 0.9, "a partial batch must wait for the delay"
    assert elapsed < 2.0


def test_preferred_batch_size_dispatches_without_waiting():
    seen = []
    config = vector_config(max_batch_size=32, max_queue_delay_us=5_000_000, preferred_batch_sizes=[8])
    with Model.from_callable(doubling(seen), config) as m:
        start = time.perf_counter()
        asyncio.run(burst(m, 8))
        assert time.perf_counter() - start < 2.0, "a preferred size must not wait out the 5 s delay"
    assert seen == [8]


def test_a_batch_never_splits_a_request_and_rows_go_back_to_their_owner():
    seen = []
    with Model.from_callable(doubling(seen), vector_config(max_batch_size=10, max_queue_delay_us=100_000)) as m:

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
    gate = threading.Event()

    def fn(inputs):
        gate.wait()
        order.extend(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=1, priority_levels=2, default_priority_level=2)) as m:

        async def main():
            first = m.infer({"x": np.full((1, 4), -1, np.float32)})  # occupies the only instance
            await asyncio.sleep(0.05)
            low = [m.infer({"x": np.full((1, 4), i, np.float32)}, priority=2) for i in range(3)]
            high = [m.infer({"x": np.full((1, 4), 100 + i, np.float32)}, priority=1) for i in range(3)]
            gate.set()
            await asyncio.gather(first, *low, *high)

        asyncio.run(main())
    assert order == [-1, 100, 101, 102, 0, 1, 2]


def test_adaptive_delay_stops_charging_a_lone_client():
    delay_us = 30_000
    with Model.from_callable(doubling(), vector_config(max_batch_size=32, max_queue_delay_us=delay_us)) as m:

        async def lone_client():
            times = []
            for i in range(6):
                start = time.perf_counter()
                await m.infer({"x": np.ones((1, 4), np.float32)})
                times.append(time.perf_counter() - start)
            return times

        times = asyncio.run(lone_client())
        # The first waits are paid; once they gained nothing, the delay is skipped.
        assert times[0] >= delay_us / 1e6 * 0.9
        assert max(times[3:]) < delay_us / 1e6 / 2
        # A burst still batches: overlapping requests restore the wait.
        seen_before = m.stats().execution_count
        asyncio.run(burst(m, 16))
        assert m.stats().execution_count - seen_before <= 2


def test_fixed_delay_when_adaptive_is_off():
    delay_us = 20_000
    config = vector_config(max_batch_size=32, max_queue_delay_us=delay_us, adaptive_queue_delay=False)
    with Model.from_callable(doubling(), config) as m:

        async def lone_client():
            for _ in range(4):
                start = time.perf_counter()
                await m.infer({"x": np.ones((1, 4), np.float32)})
                assert time.perf_counter() - start >= delay_us / 1e6 * 0.9

        asyncio.run(lone_client())


def test_instances_run_batches_concurrently():
    one_config = vector_config(max_batch_size=1)
    four_config = vector_config(max_batch_size=1, instances=4)
    with Model.from_callable(doubling(delay=0.2), one_config) as one, \
            Model.from_callable(doubling(delay=0.2), four_config) as four:

        def timed(m):
            start = time.perf_counter()
            asyncio.run(burst(m, 4))
            return time.perf_counter() - start

        # time.sleep releases the GIL, as torch and onnxruntime do while computing.
        assert timed(one) >= 0.75
        assert timed(four) < 0.5


def test_the_event_loop_is_free_while_requests_wait():
    with Model.from_callable(doubling(delay=0.3), vector_config(max_batch_size=8)) as m:

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            t = asyncio.create_task(ticker())
            await m.infer({"x": np.ones((1, 4), np.float32)})
            t.cancel()
            return ticks

        assert asyncio.run(main()) >= 10


def test_one_wakeup_per_batch():
    from loopserve.serving.model import _channels

    with Model.from_callable(doubling(), vector_config(max_batch_size=32, max_queue_delay_us=200_000)) as m:

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

    with Model.from_callable(fn, vector_config(max_batch_size=32, max_queue_delay_us=5_000)) as m:

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
                         dynamic_batching=DynamicBatching(max_queue_delay_us=50_000))
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
        deadline = time.monotonic() + 2
        done = []
        while not done and time.monotonic() < deadline:
            time.sleep(0.005)
            done = queue.drain()
        assert [(token, status) for token, status, _ in done] == [(7, _core.STATUS_OK)]
        np.testing.assert_array_equal(done[0][2][0], x * 2)
