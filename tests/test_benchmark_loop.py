"""natix_miner.benchmark.closed_loop: every bad answer is counted, whatever the concurrency."""

import asyncio

from natix_miner.benchmark import closed_loop


async def test_closed_loop_counts_every_bad_answer_under_concurrency():
    async def call(i: int) -> bool:
        await asyncio.sleep(0.001 * (i % 3))  # answers interleave across clients
        return i % 2 == 0

    lat, bad, wall = await closed_loop(call, 40, 8)
    assert len(lat) == 40 and bad == 20 and wall > 0
