"""A scripted stand-in for ``natix_miner.engine.ray_bridge`` (same arguments, same socket protocol),
for the Ray client's rules without a cluster. ``FAKE_BRIDGE_MODE``:

* ``answer``: status every ``--probe-interval``; every predict answered with probability
  ``FAKE_BRIDGE_P`` (default 0.5: the client must never pass 0.5 on);
* ``hang``: status as above, predicts never answered (a slow cluster);
* ``silent``: one status, then nothing (a hung cluster: the client's staleness check);
* ``die``: one status, then exit after ``FAKE_BRIDGE_DIE_S`` seconds (a dead cluster).

``FAKE_BRIDGE_COUNT`` (a file): one line appended per start, so a test sees the reconnects.
"""

import argparse
import asyncio
import os
import socket
import sys

from natix_miner.engine.ray_client import read_frame, send_frame
from natix_miner.engine.result import PredictResult

STATUS = {"ready": True, "profile": "test", "experts": {"a": {"load": "loaded", "breaker": "closed"}},
          "degraded": []}


async def run(sock, interval: float) -> int:
    mode = os.environ.get("FAKE_BRIDGE_MODE", "answer")
    reader, writer = await asyncio.open_connection(sock=sock)
    await send_frame(writer, ("status", STATUS))

    async def statuses():
        while mode in ("answer", "hang"):
            await asyncio.sleep(interval)
            await send_frame(writer, ("status", STATUS))
        if mode == "die":
            await asyncio.sleep(float(os.environ.get("FAKE_BRIDGE_DIE_S", "1")))
            os._exit(3)
        await asyncio.sleep(3600)

    asyncio.get_running_loop().create_task(statuses())
    while True:
        try:
            msg = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0
        if msg[0] == "predict" and mode == "answer":
            p = float(os.environ.get("FAKE_BRIDGE_P", "0.5"))
            await send_frame(writer, ("result", msg[1], PredictResult(probability=p, tiers_run=["fast"]), None))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--probe-interval", type=float, default=1.0)
    args = p.parse_args()
    count = os.environ.get("FAKE_BRIDGE_COUNT")
    if count:
        with open(count, "a") as fh:
            fh.write("start\n")
    return asyncio.run(run(socket.socket(fileno=args.fd), args.probe_interval))


if __name__ == "__main__":
    sys.exit(main())
