"""The model pool's limits on real worker processes: a call past its time or memory is
stopped with a clear error and the pool serves the next one; one project cannot take more
than its share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from api.errors import ApiError
from api.model_pool import ModelPool
from trainyard.settings import Settings

MIB = 1024**2


def sleep_then_answer(seconds: float) -> str:
    """Stand-in for a slow generation: hold the worker for a while."""
    time.sleep(seconds)
    return "done"


def allocate(n_bytes: int) -> int:
    """Stand-in for a model too large for the worker: touch that many bytes."""
    return len(bytearray(n_bytes))


@pytest.fixture
def pool() -> Iterator[ModelPool]:
    settings = Settings(
        model_workers=1,
        model_queue=2,
        model_calls_per_project=1,
        model_call_seconds=1.0,
        model_worker_memory_bytes=1024 * MIB,
    )
    pool = ModelPool(settings)
    yield pool
    pool.close()


def test_a_call_past_its_time_is_504_and_the_pool_serves_the_next(pool: ModelPool) -> None:
    async def scenario() -> str:
        with pytest.raises(ApiError) as err:
            await pool.run("prj_a", sleep_then_answer, 30.0)
        assert err.value.status == 504 and err.value.code == "model_call_timeout"
        assert err.value.details == {"limit_seconds": 1.0}
        return str(await pool.run("prj_a", sleep_then_answer, 0.0))

    started = time.monotonic()
    assert asyncio.run(scenario()) == "done"
    assert time.monotonic() - started < 25  # the 30 s call was killed, not waited for
    assert not pool.busy


def test_a_call_past_the_memory_limit_is_422_and_the_pool_serves_the_next(
    pool: ModelPool,
) -> None:
    async def scenario() -> int:
        with pytest.raises(ApiError) as err:
            await pool.run("prj_a", allocate, 2048 * MIB)
        assert err.value.status == 422 and err.value.code == "model_too_large"
        assert err.value.details == {"limit_bytes": 1024 * MIB}
        return int(await pool.run("prj_a", allocate, 16 * MIB))

    assert asyncio.run(scenario()) == 16 * MIB


def test_one_project_gets_its_share_and_the_others_still_get_in(pool: ModelPool) -> None:
    async def scenario() -> None:
        first = asyncio.ensure_future(pool.run("prj_a", sleep_then_answer, 0.5))
        await asyncio.sleep(0)  # admitted
        with pytest.raises(ApiError) as err:
            await pool.run("prj_a", sleep_then_answer, 0.0)
        assert err.value.status == 429 and err.value.code == "too_many_model_calls"
        assert int(err.value.headers["Retry-After"]) >= 1
        other = asyncio.ensure_future(pool.run("prj_b", sleep_then_answer, 0.0))
        third = asyncio.ensure_future(pool.run("prj_c", sleep_then_answer, 0.0))
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as full:  # 1 worker + 2 waiting: the pool is full
            await pool.run("prj_d", sleep_then_answer, 0.0)
        assert full.value.status == 429 and full.value.code == "model_workers_busy"
        assert await asyncio.gather(first, other, third) == ["done"] * 3

    asyncio.run(scenario())
    assert not pool.busy
