"""The model pool's limits on real worker processes: a call past its time or memory is
stopped with a clear error and the pool serves the next one; one project cannot take more
than its share. A streamed call's pieces arrive while it runs, and a stream closed early
stops its worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from api.errors import ApiError
from api.model_pool import ModelPool
from trainyard.settings import Settings

MIB = 1024**2


def sleep_then_answer(seconds: float) -> str:
    """Stand-in for a slow generation: hold the worker for a while."""
    time.sleep(seconds)
    return "done"


def count_slowly(n: int, seconds: float, marker: str, sink: Any) -> int:
    """Stand-in for a streamed generation: put 0..n-1 a piece at a time, then mark the end."""
    for i in range(n):
        sink.put(i)
        time.sleep(seconds)
    Path(marker).write_text("finished")
    return n


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


def test_a_stream_delivers_pieces_as_they_come_then_the_result(
    pool: ModelPool, tmp_path: Path
) -> None:
    marker = str(tmp_path / "done")

    async def scenario() -> tuple[list[tuple[int, float]], Any]:
        started = time.monotonic()
        stream = await pool.stream("prj_a", count_slowly, 5, 0.15, marker)
        seen = [(piece, time.monotonic() - started) async for piece in stream]
        return seen, stream.result

    seen, result = asyncio.run(scenario())
    assert [piece for piece, _ in seen] == [0, 1, 2, 3, 4] and result == 5
    assert seen[-1][1] - seen[0][1] >= 0.5  # each came as it was put, not all at the end
    assert Path(marker).exists() and not pool.busy


def test_a_stream_closed_early_stops_its_worker_and_frees_its_place(
    pool: ModelPool, tmp_path: Path
) -> None:
    marker = tmp_path / "done"

    async def scenario() -> str:
        stream = await pool.stream("prj_a", count_slowly, 100, 0.005, str(marker))
        assert await anext(stream) == 0
        with pytest.raises(ApiError) as err:  # the project's one call is taken
            await pool.run("prj_a", sleep_then_answer, 0.0)
        assert err.value.status == 429
        stream.close()  # as when the client goes away
        assert not pool.busy
        return str(await pool.run("prj_a", sleep_then_answer, 0.0))

    assert asyncio.run(scenario()) == "done"
    time.sleep(1.0)  # the 100 pieces would have been put by now
    assert not marker.exists()


def test_a_stream_past_its_time_ends_with_a_504(pool: ModelPool, tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        seen: list[int] = []
        stream = await pool.stream("prj_a", count_slowly, 100, 0.1, str(tmp_path / "done"))
        with pytest.raises(ApiError) as err:
            async for piece in stream:
                seen.append(piece)
        assert err.value.status == 504 and err.value.code == "model_call_timeout"
        return seen

    seen = asyncio.run(scenario())
    assert 1 <= len(seen) < 100 and seen == list(range(len(seen)))
    assert not pool.busy


@pytest.mark.parametrize(
    ("device", "capped"),
    [("cpu", True), ("cuda", False), ("auto", not torch.cuda.is_available())],
)
def test_the_address_space_cap_holds_unless_models_run_on_a_gpu(device: str, capped: bool) -> None:
    """CUDA reserves far more address space than it uses: a capped worker could not start it
    (a GPU run met this), so a worker whose models run on the GPU is not capped."""
    code = (
        "import resource, sys\n"
        "from domain.model_calls import limit_memory\n"
        "limit_memory(1 << 40, sys.argv[1])\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code, device], capture_output=True, text=True, check=True, cwd=root
    )
    assert (int(out.stdout) == 1 << 40) is capped, out.stdout
