"""Past saturation the batcher refuses at once what would wait too long (max_queue_wait_us),
instead of queueing it: the requests it takes are answered as fast as at saturation."""

import asyncio
import threading
import time

import numpy as np
import pytest

from loopserve import Model, QueueFull
from conftest import vector_config


def slow_model(batch_s: float, gate: threading.Event | None = None, entered: threading.Event | None = None,
               **batching):
    """y = x after batch_s of work; with a gate, every batch after the first also waits for it."""
    calls = [0]

    def fn(inputs):
        calls[0] += 1
        time.sleep(batch_s)
        if gate is not None and calls[0] > 1:
            entered.set()
            assert gate.wait(60), "the test never opened the gate"
        return {"y": inputs["x"]}

    return Model.from_callable(fn, vector_config(max_batch_size=1, adaptive_queue_delay=False, **batching))


def test_requests_that_would_wait_past_the_limit_are_refused_at_once():
    """The burst arrives while the only instance holds a batch (gated), so the queue grows by
    exactly one request per submit, and the refusals follow from the measured batch time alone,
    however slow or loaded the machine."""
    limit_us = 100_000
    gate, entered = threading.Event(), threading.Event()
    with slow_model(0.02, gate, entered, max_queue_wait_us=limit_us) as model:
        model.infer_sync({"x": np.zeros((1, 4), np.float32)})  # one batch: the batch time is known
        first = model.stats()
        batch_ns = first.compute_infer_ns // first.execution_count  # what the batcher measured: >= 20 ms

        async def burst():
            futures = [model.infer({"x": np.full((1, 4), -1, np.float32)})]
            assert await asyncio.to_thread(entered.wait, 60)  # the instance is busy, the queue empty
            refused = []
            for i in range(40):
                try:
                    futures.append(model.infer({"x": np.full((1, 4), i, np.float32)}))
                except QueueFull as e:
                    refused.append(str(e))
            gate.set()
            await asyncio.gather(*futures)
            return len(futures), refused

        taken, refused = asyncio.run(burst())
    # A request is refused when the batches queued ahead of it (one request each) would take
    # longer than the limit: 100 ms of >= 20 ms batches leaves room for at most five.
    room = max(q for q in range(41) if q * batch_ns // 1000 <= limit_us)
    assert batch_ns >= 20_000_000 and room <= 5, batch_ns
    assert taken == 1 + 1 + room, (taken, batch_ns, refused[:1])  # the running one, and a queue of room + 1
    assert len(refused) == 41 - taken
    assert "at capacity" in refused[0] and "max_queue_wait_us" in refused[0]
    assert model.stats().rejected == len(refused)


def test_without_a_limit_everything_queues():
    with slow_model(0.002, max_queue_wait_us=0) as model:
        model.infer_sync({"x": np.zeros((1, 4), np.float32)})

        async def burst():
            return await asyncio.gather(*(model.infer({"x": np.zeros((1, 4), np.float32)}) for _ in range(40)))

        assert len(asyncio.run(burst())) == 40
        assert model.stats().rejected == 0


def test_the_limit_is_validated():
    with pytest.raises(Exception, match="max_queue_wait_us"):
        slow_model(0.0, max_queue_wait_us=-1)
