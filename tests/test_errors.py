"""Every refusal is a clear exception, touches only its own request, and the model serves on."""

import asyncio
import threading

import numpy as np
import pytest

from loopserve import InvalidInput, Model, ModelError, QueueFull, TimedOut, Unavailable

from conftest import vector_config


def doubling(inputs):
    return {"y": inputs["x"] * 2}


@pytest.fixture
def model():
    with Model.from_callable(doubling, vector_config(max_batch_size=8)) as m:
        yield m


def ok(m):
    """The model still serves."""
    np.testing.assert_array_equal(m.infer_sync({"x": np.ones((1, 4), np.float32)})["y"], 2)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"z": np.ones((1, 4), np.float32)}, r"model 'm' has no input 'z' \(its inputs: 'x'\)"),
        ({}, r"model 'm' needs input 'x'"),
        ({"x": np.ones((1, 4), np.float64)}, r"input 'x' has datatype FP64, but model 'm' expects FP32"),
        ({"x": np.ones((1, 5), np.float32)}, r"input 'x' has shape \[1, 5\], but model 'm' expects \[-1, 4\]"),
        ({"x": np.ones(4, np.float32)}, r"has shape \[4\], but model 'm' expects \[-1, 4\] \(batch dimension first"),
        ({"x": np.ones((9, 4), np.float32)}, r"request has 9 rows, more than the max_batch_size 8"),
        ({"x": np.ones((0, 4), np.float32)}, r"request has 0 rows"),
        ({"x": np.array([["a"] * 4])}, r"input 'x' has datatype BYTES, but model 'm' expects FP32"),
        ({"x": np.ones((1, 4), np.complex64)}, r"input 'x': numpy dtype complex64 has no Open Inference Protocol"),
    ],
)
def test_invalid_input_is_refused_before_queueing(model, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        model.infer_sync(inputs)

    async def via_loop():
        with pytest.raises(InvalidInput, match=message):
            model.infer(inputs)

    asyncio.run(via_loop())
    assert model.stats().queued == 0
    ok(model)


def test_bad_priority_is_refused(model):
    with pytest.raises(InvalidInput, match=r"priority 7 is outside \[1, 2\]"):
        model.infer_sync({"x": np.ones((1, 4), np.float32)}, priority=7)


def test_a_model_that_raises_fails_only_its_own_batch():
    def fn(inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise ValueError("negative input: the model cannot take it")
        return {"y": x * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=4, max_queue_delay_us=100_000)) as m:

        async def main():
            bad = [m.infer({"x": np.full((1, 4), -1, np.float32)}) for _ in range(4)]  # one batch of 4
            good = [m.infer({"x": np.full((1, 4), i, np.float32)}) for i in range(4)]  # the next batch
            return await asyncio.gather(*bad, *good, return_exceptions=True)

        results = asyncio.run(main())
        for r in results[:4]:
            assert isinstance(r, ModelError)
            assert "ValueError: negative input: the model cannot take it" in str(r)
        for i, r in enumerate(results[4:]):
            np.testing.assert_array_equal(r["y"], np.full((1, 4), 2 * i))
        stats = m.stats()
        assert stats.failed == 4 and stats.success == 4


@pytest.mark.parametrize(
    "returned, message",
    [
        (lambda x: {"y": np.ones((x.shape[0] + 1, 4), np.float32)}, r"returned output 'y' with shape \[\d+, 4\] for a batch of \d+ rows"),
        (lambda x: {"y": np.ones((x.shape[0], 3), np.float32)}, r"returned output 'y' with shape \[\d+, 3\]"),
        (lambda x: {"y": x.astype(np.float64)}, r"returned output 'y' as FP64; its config declares FP32"),
        (lambda x: {"z": x}, r"returned no output 'y' \(it returned \['z'\]\)"),
        (lambda x: "nonsense", r"returned output 'y' as BYTES; its config declares FP32"),
        (lambda x: {"y": x.astype(np.complex64)}, r"output 'y' returned by the model: numpy dtype complex64 has no"),
        (lambda x: (x, x), r"returned 2 outputs; its config declares 1"),
    ],
)
def test_a_model_returning_the_wrong_thing_is_a_clear_error(returned, message):
    with Model.from_callable(lambda inputs: returned(inputs["x"]), vector_config(max_batch_size=4)) as m:
        with pytest.raises(ModelError, match=message):
            m.infer_sync({"x": np.ones((2, 4), np.float32)})


def test_timed_out_requests_are_answered_and_never_run():
    ran = []
    gate, entered = threading.Event(), threading.Event()

    def fn(inputs):
        entered.set()
        gate.wait()
        ran.extend(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=1)) as m:

        async def main():
            blocker = m.infer({"x": np.full((1, 4), 0, np.float32)})
            assert await asyncio.to_thread(entered.wait, 60)  # the only instance is now busy
            late = m.infer({"x": np.full((1, 4), 1, np.float32)}, timeout_us=20_000)
            # A timeout is answered when a worker next looks at the queue: here, when the
            # only one finishes the blocking batch.
            threading.Timer(0.2, gate.set).start()
            with pytest.raises(TimedOut, match=r"timed out after \d+ us in the queue of model 'm' .*it was not run"):
                await asyncio.wait_for(late, 30)
            await blocker

        asyncio.run(main())
        assert ran == [0], "the timed-out request must never run"
        assert m.stats().timed_out == 1
        ok(m)


def test_default_timeout_from_config():
    gate, entered = threading.Event(), threading.Event()

    def fn(inputs):
        entered.set()
        gate.wait()
        return {"y": inputs["x"] * 2}

    # 0.5 s: ample for a worker to take the first request on a loaded machine.
    with Model.from_callable(fn, vector_config(max_batch_size=1, default_timeout_us=500_000, instances=1)) as m:

        async def main():
            first = m.infer({"x": np.ones((1, 4), np.float32)})
            assert await asyncio.to_thread(entered.wait, 60)  # the only instance is now busy
            second = m.infer({"x": np.ones((1, 4), np.float32)})
            threading.Timer(0.6, gate.set).start()  # past the second's timeout: what is tested
            return await asyncio.gather(first, second, return_exceptions=True)

        first, second = asyncio.run(main())
        assert isinstance(second, TimedOut)
        # The first was taken before its 0.5 s ran out; running longer is not a timeout.
        np.testing.assert_array_equal(first["y"], 2)


def test_a_full_queue_refuses_at_once_and_serves_on():
    gate, entered = threading.Event(), threading.Event()

    def fn(inputs):
        entered.set()
        gate.wait()
        return {"y": inputs["x"] * 2}

    with Model.from_callable(fn, vector_config(max_batch_size=1, queue_capacity=3)) as m:

        async def main():
            running = m.infer({"x": np.ones((1, 4), np.float32)})
            assert await asyncio.to_thread(entered.wait, 60)  # the only instance is now busy
            queued = [m.infer({"x": np.ones((1, 4), np.float32)}) for _ in range(3)]
            with pytest.raises(QueueFull, match=r"the queue of model 'm' is full \(3 requests\); retry later"):
                m.infer({"x": np.ones((1, 4), np.float32)})
            gate.set()
            return await asyncio.gather(running, *queued)

        assert len(asyncio.run(main())) == 4
        assert m.stats().rejected == 1
        ok(m)


def test_closed_model_refuses_and_finishes_what_was_queued():
    m = Model.from_callable(doubling, vector_config(max_batch_size=8, max_queue_delay_us=200_000))

    async def main():
        pending = [m.infer({"x": np.full((1, 4), i, np.float32)}) for i in range(5)]
        await asyncio.to_thread(m.close)
        outs = await asyncio.gather(*pending)
        with pytest.raises(Unavailable, match="model 'm' is unloading"):
            m.infer({"x": np.ones((1, 4), np.float32)})
        return outs

    outs = asyncio.run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 2 * i))


def test_cancelled_caller_does_not_disturb_others(model):
    async def main():
        a = model.infer({"x": np.ones((1, 4), np.float32)})
        b = model.infer({"x": np.full((1, 4), 3, np.float32)})
        a.cancel()
        return await b

    np.testing.assert_array_equal(asyncio.run(main())["y"], 6)
