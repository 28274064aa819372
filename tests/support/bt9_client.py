"""Run by tests under bittensor 9.12.2 (.venv-bt9): query a miner the way live validators do.

Prints one JSON line: {"bittensor_version", "status_code", "prediction", "model_url"}; with repeated
``--target PORT:HOTKEY:ROUTE`` (several axons, e.g. the hotkeys of one process) one line per target,
queried at once, each also carrying "port" and "route".
"""

import argparse
import asyncio
import json
import sys

import bittensor as bt
import pydantic
from bittensor.utils import networking

networking.get_external_ip = lambda: "127.0.0.1"  # closed network: no public IP lookup


# The validators' own wire classes (a copy of the spec's field table, as a validator holds them).
class ImageSynapse(bt.Synapse):
    testnet_label: int = pydantic.Field(default=-1)
    image: str = pydantic.Field(default="")
    prediction: float = pydantic.Field(default=-1.0)

    def deserialize(self) -> float:
        return self.prediction


class ExtendedImageSynapse(ImageSynapse):
    model_url: str = pydantic.Field(default="")


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wallet-path", required=True)
    ap.add_argument("--wallet-name", required=True)
    ap.add_argument("--wallet-hotkey", required=True)
    ap.add_argument("--port", type=int)
    ap.add_argument("--axon-hotkey")
    ap.add_argument("--route", default="ImageSynapse")
    ap.add_argument("--target", action="append", default=[], metavar="PORT:HOTKEY:ROUTE")
    ap.add_argument("--image-file", default="-")
    a = ap.parse_args()
    image = sys.stdin.read().strip() if a.image_file == "-" else open(a.image_file).read().strip()
    wallet = bt.wallet(name=a.wallet_name, hotkey=a.wallet_hotkey, path=a.wallet_path)
    dendrite = bt.dendrite(wallet=wallet)
    targets = [t.split(":") for t in a.target] or [(a.port, a.axon_hotkey, a.route)]

    async def one(port, hotkey, route):
        axon = bt.AxonInfo(version=1, ip="127.0.0.1", port=int(port), ip_type=4, hotkey=hotkey, coldkey=hotkey)
        cls = {"ImageSynapse": ImageSynapse, "ExtendedImageSynapse": ExtendedImageSynapse}[route]
        res = await dendrite.forward(axon, cls(image=image), timeout=9, deserialize=False)
        return {"bittensor_version": bt.__version__, "status_code": res.axon.status_code, "port": int(port),
                "route": route, "prediction": res.prediction, "model_url": getattr(res, "model_url", None)}

    for out in await asyncio.gather(*(one(*t) for t in targets)):
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
