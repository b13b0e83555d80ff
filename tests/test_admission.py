"""Past saturation the batcher refuses at once what would wait too long (max_queue_wait_us),
instead of queueing it: the requests it takes are answered as fast as at saturation."""

import asyncio
import time

import numpy as np
import pytest

from loopserve import Model, QueueFull
from conftest import vector_config


def slow_model(batch_s: float, **batching):
    def fn(inputs):
        time.sleep(batch_s)
        return {"y": inputs["x"]}

    return Model.from_callable(fn, vector_config(max_batch_size=1, adaptive_queue_delay=False, **batching))


def test_requests_that_would_wait_past_the_limit_are_refused_at_once():
    with slow_model(0.02, max_queue_wait_us=100_000) as model:
        model.infer_sync({"x": np.zeros((1, 4), np.float32)})  # one batch: the batch time is known

        async def burst():
            futures, refused = [], []
            for i in range(40):
                try:
                    futures.append(model.infer({"x": np.full((1, 4), i, np.float32)}))
                except QueueFull as e:
                    refused.append(str(e))
            start = time.perf_counter()
            await asyncio.gather(*futures)
            return len(futures), refused, time.perf_counter() - start

        taken, refused, took = asyncio.run(burst())
    # 100 ms of 20 ms batches: about five requests wait, the rest are told to retry.
    assert 4 <= taken <= 8, (taken, refused)
    assert len(refused) == 40 - taken
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
