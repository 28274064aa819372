"""The throughput path: many JPEGs -> P(roadwork) from one tier, across one replica per device.

The online path (:meth:`Engine.predict`) is built for one validator image at a time under a
deadline. Operators who label datasets, evaluate profiles or serve many hotkeys need images per
second instead. ``BulkPredictor`` loads one replica of each expert of a tier on every device,
feeds each replica whole batches of encoded JPEGs (nvJPEG decoding, normalisation, the forward and
the consensus all stay on the card; one float per image comes back), and keeps every GPU busy
with ``workers_per_device`` feeder threads on their own CUDA streams.

Usage::

    bulk = BulkPredictor(profile, devices=["cuda:0", "cuda:1"], batch_size=256)
    bulk.load()
    probs = bulk.predict(list_of_jpeg_bytes)        # np.ndarray (N,) float32 in [0, 1]
    bulk.close()

Experts used here must implement ``predict_encoded(datas) -> (N,) logits tensor`` (the timm
family does). Images the GPU decoder refuses are decoded on the CPU; an image nobody can decode
gets the profile's fallback probability.
"""

import concurrent.futures
import logging
import queue
import threading
import typing

import numpy as np

from natix_miner.config import Profile
from natix_miner.experts import create_expert

log = logging.getLogger("natix_miner.engine.bulk")


class BulkPredictor:
    def __init__(self, profile: Profile, devices: typing.Sequence[str], tier: int = 0, batch_size: int = 256,
                 workers_per_device: int = 2):
        self.profile = profile
        self.tier = profile.tiers[tier]
        self.devices = list(devices)
        self.batch_size = int(batch_size)
        self.workers_per_device = max(1, int(workers_per_device))
        self.replicas: typing.Dict[str, typing.Dict[str, typing.Any]] = {}
        cons = profile.consensus
        names = list(self.tier.experts)
        self.weights = np.array([cons.weights.get(n, 1.0) for n in names], dtype=np.float32)
        self.norm = float(np.abs(self.weights).sum()) if cons.normalize else 1.0
        self.bias = float(cons.bias)
        self.temperature = float(cons.temperature)

    def load(self) -> None:
        for dev in self.devices:
            experts = {}
            for name in self.tier.experts:
                spec = self.profile.expert(name).model_copy(update={"device": dev})
                e = create_expert(spec, self.profile)
                if not hasattr(e, "predict_encoded"):
                    raise TypeError(f"expert {name} ({spec.family}) has no bulk path (predict_encoded)")
                e.load(dev)
                e.warmup()
                experts[name] = e
            self.replicas[dev] = experts

    def close(self) -> None:
        for experts in self.replicas.values():
            for e in experts.values():
                e.close()
        self.replicas.clear()

    def _pool(self, logits: typing.List[typing.Any]):
        """Weighted log-odds pooling on the device: (E, N) logits -> (N,) probabilities."""
        import torch

        z = torch.stack(logits)  # (E, N)
        w = torch.as_tensor(self.weights, device=z.device).view(-1, 1)
        pooled = (w * z.clamp(-9.21, 9.21)).sum(0) / self.norm
        return torch.sigmoid((pooled + self.bias) / self.temperature)

    def _run_batch(self, dev: str, datas: typing.Sequence[bytes]) -> np.ndarray:
        experts = self.replicas[dev]
        logits = [e.predict_encoded(datas) for e in experts.values()]
        return self._pool(logits).float().cpu().numpy()

    def _run_batch_safe(self, dev: str, datas: typing.Sequence[bytes]) -> np.ndarray:
        try:
            return self._run_batch(dev, datas)
        except ValueError:  # undecodable images inside: answer them one by one
            out = np.empty(len(datas), np.float32)
            for i, d in enumerate(datas):
                try:
                    out[i] = self._run_batch(dev, [d])[0]
                except ValueError:
                    out[i] = self.profile.fallback_probability
            return out

    def predict(self, datas: typing.Sequence[bytes], progress: bool = False) -> np.ndarray:
        if not self.replicas:
            raise RuntimeError("call load() first")
        n = len(datas)
        out = np.empty(n, np.float32)
        chunks: "queue.Queue[typing.Optional[typing.Tuple[int, int]]]" = queue.Queue()
        for start in range(0, n, self.batch_size):
            chunks.put((start, min(n, start + self.batch_size)))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="img", desc="bulk")
        lock = threading.Lock()
        errors: typing.List[BaseException] = []

        def worker(dev: str) -> None:
            import torch

            stream = torch.cuda.Stream(device=dev) if dev.startswith("cuda") else None
            ctx = torch.cuda.stream(stream) if stream is not None else _null()
            with ctx:
                while True:
                    try:
                        item = chunks.get_nowait()
                    except queue.Empty:
                        return
                    a, b = item
                    try:
                        out[a:b] = self._run_batch_safe(dev, datas[a:b])
                    except BaseException as exc:  # surfaced after join
                        errors.append(exc)
                        return
                    if bar is not None:
                        with lock:
                            bar.update(b - a)

        threads = [(dev, k) for dev in self.devices for k in range(self.workers_per_device)]
        with concurrent.futures.ThreadPoolExecutor(len(threads)) as pool:
            list(pool.map(lambda t: worker(t[0]), threads))
        if bar is not None:
            bar.close()
        if errors:
            raise errors[0]
        bad = ~np.isfinite(out)
        out[bad] = self.profile.fallback_probability
        return np.clip(out, 0.0, 1.0)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

