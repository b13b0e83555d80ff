"""Many callers at once: every answer is correct and belongs to its own request."""

import asyncio
import random
import threading

import numpy as np

from loopserve import Model

from conftest import vector_config

TOTAL = 20_000
TASKS = 64
THREADS = 4


def affine(inputs):
    x = inputs["x"]
    return {"y": x * 3 + 1}  # exact in float32 for the small integers used here


# These tests check answers, not admission: max_queue_wait_us=0 turns off the refusals that
# follow from the measured batch time, which GIL contention among the clients on a loaded
# machine can stretch past the default 1 s of queued work (test_admission tests those).
def test_20000_requests_from_64_tasks_and_4_threads_each_get_their_own_answer():
    config = vector_config(max_batch_size=32, max_queue_delay_us=500, queue_capacity=256, instances=2,
                           max_queue_wait_us=0)
    per_thread = TOTAL // 2 // THREADS
    per_task = (TOTAL - per_thread * THREADS) // TASKS
    wrong = []

    def check(x, out):
        if not np.array_equal(out["y"], x * 3 + 1):
            wrong.append((x, out["y"]))

    with Model.from_callable(affine, config) as m:

        def thread_client(seed):
            rng = random.Random(seed)
            for i in range(per_thread):
                rows = rng.randint(1, 8)
                x = np.full((rows, 4), seed * 100_000 + i, np.float32)
                x[:, 1] = np.arange(rows)  # rows differ too, so a shuffled row shows
                check(x, m.infer_sync({"x": x}))

        async def task_client(seed):
            rng = random.Random(seed)
            for i in range(per_task):
                rows = rng.randint(1, 8)
                x = np.full((rows, 4), -(seed * 100_000 + i), np.float32)
                x[:, 1] = np.arange(rows)
                check(x, await m.infer({"x": x}))

        async def tasks():
            await asyncio.gather(*(task_client(s + 1) for s in range(TASKS)))

        threads = [threading.Thread(target=thread_client, args=(s + 1,)) for s in range(THREADS)]
        for t in threads:
            t.start()
        asyncio.run(tasks())
        for t in threads:
            t.join()
        stats = m.stats()

    assert not wrong, f"{len(wrong)} wrong answers, first: {wrong[:1]}"
    assert stats.success == per_thread * THREADS + per_task * TASKS >= TOTAL - TASKS
    assert stats.failed == stats.timed_out == stats.rejected == 0
    # How much they share depends on the scheduler (a loaded 2-core CI box ran 1.9 requests a batch,
    # a quiet one 3 to 5); test_batching's burst tests pin the batch sizes exactly. Here: some do.
    assert stats.execution_count < stats.success, "68 concurrent clients and no request shared a batch"


def test_several_event_loops_in_several_threads():
    with Model.from_callable(affine, vector_config(max_batch_size=16, max_queue_delay_us=200, max_queue_wait_us=0)) as m:
        errors = []

        def loop_thread(seed):
            async def main():
                xs = [np.full((1, 4), seed * 1000 + i, np.float32) for i in range(200)]
                outs = await asyncio.gather(*(m.infer({"x": x}) for x in xs))
                for x, out in zip(xs, outs):
                    if not np.array_equal(out["y"], x * 3 + 1):
                        errors.append(seed)

            asyncio.run(main())

        threads = [threading.Thread(target=loop_thread, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert m.stats().success == 800


def test_event_loops_that_come_and_go_leave_nothing_behind():
    import gc
    import os

    from loopserve.serving.model import _channels

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    with Model.from_callable(affine, vector_config(max_batch_size=4)) as m:
        before = open_fds()
        for i in range(50):

            async def one():
                x = np.full((1, 4), i, np.float32)
                np.testing.assert_array_equal((await m.infer({"x": x}))["y"], x * 3 + 1)

            asyncio.run(one())
        gc.collect()
        assert len(_channels) == 0, "a closed loop's completion channel must go with it"
        assert open_fds() <= before, "each loop's eventfd must be closed with it"
