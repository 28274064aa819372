"""The Ray driver of a miner that answers through Ray Serve (child process of :mod:`ray_client`).

Connects to the cluster, takes the application's ``DeploymentHandle`` and then, on the socket the
miner passed (``--fd``): runs every ``("predict", id, image, budget_s, all_tiers)`` through the
ingress and answers ``("result", id, PredictResult | None, error)``; sends ``("status", dict)``
every ``--probe-interval`` seconds. When the cluster cannot be reached, or a status probe fails,
it sends ``("error", reason)`` and exits; the miner starts a new one. A Ray driver whose cluster
dies exits with it, which is why this is a process of its own.

    python -m natix_miner.engine.ray_bridge --fd 5 --address 127.0.0.1:6379 --app natix
"""

import argparse
import asyncio
import socket
import sys
import typing

from natix_miner.engine.ray_client import read_frame, send_frame


async def _serve(sock: socket.socket, handle, probe_interval_s: float) -> int:
    reader, writer = await asyncio.open_connection(sock=sock)
    lock = asyncio.Lock()
    tasks: typing.Set[asyncio.Task] = set()

    async def send(msg: tuple) -> None:
        async with lock:
            await send_frame(writer, msg)

    async def predict(rid: int, image, budget_s: float, all_tiers: bool) -> None:
        try:
            res = await asyncio.wait_for(handle.predict.remote(image, budget_s, all_tiers), timeout=budget_s + 0.5)
            await send(("result", rid, res, None))
        except Exception as exc:  # noqa: BLE001 - the miner answers the fallback
            await send(("result", rid, None, f"{type(exc).__name__}: {exc}"[:300]))

    async def probe() -> None:
        while True:
            try:
                st = await asyncio.wait_for(handle.status.remote(), timeout=max(2.0, 3 * probe_interval_s))
            except Exception as exc:  # noqa: BLE001 - the cluster or the app is gone
                await send(("error", f"status probe failed: {type(exc).__name__}: {exc}"[:300]))
                raise SystemExit(3)
            await send(("status", st))
            await asyncio.sleep(probe_interval_s)

    prober = asyncio.get_running_loop().create_task(probe())
    reading = asyncio.get_running_loop().create_task(_read(reader, predict, tasks))
    done, _ = await asyncio.wait({prober, reading}, return_when=asyncio.FIRST_COMPLETED)
    for t in (prober, reading, *tasks):
        t.cancel()
    return 3 if prober in done else 0


async def _read(reader, predict, tasks) -> None:
    while True:
        try:
            msg = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the miner closed its end
        if msg[0] == "predict":
            t = asyncio.get_running_loop().create_task(predict(*msg[1:]))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        elif msg[0] == "close":
            return


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m natix_miner.engine.ray_bridge")
    p.add_argument("--fd", type=int, required=True, help="socket handed over by the miner")
    p.add_argument("--address", required=True, help="ray.init address (HOST:PORT, auto, ray://HOST:PORT)")
    p.add_argument("--app", required=True, help="Ray Serve application name")
    p.add_argument("--probe-interval", type=float, default=1.0, help="seconds between status messages")
    args = p.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        from ray import serve

        from natix_miner.engine.ray_serve import connect

        connect(args.address)
        handle = serve.get_app_handle(args.app)
    except Exception as exc:  # noqa: BLE001 - reported to the miner, which retries
        asyncio.run(_say(sock, ("error", f"{type(exc).__name__}: {exc}"[:300])))
        return 3
    return asyncio.run(_serve(sock, handle, args.probe_interval))


async def _say(sock: socket.socket, msg: tuple) -> None:
    _, writer = await asyncio.open_connection(sock=sock)
    await send_frame(writer, msg)
    writer.close()


if __name__ == "__main__":
    sys.exit(main())
