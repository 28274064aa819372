"""The throughput path: many JPEGs -> P(roadwork) from one tier, across replicas on every device.

The online path (:meth:`Engine.predict`) is built for one validator image at a time under a
deadline. Operators who label datasets, evaluate profiles or serve many hotkeys need images per
second instead. ``BulkPredictor`` runs replicas of a tier's experts and feeds each whole batches
of encoded JPEGs: nvJPEG decoding, normalisation, the forward and the consensus all stay on the
card, and one float per image comes back.

Two ways to run replicas:

* ``mode="process"`` (default on GPUs): ``replicas_per_device`` worker processes per GPU, each with
  its own CUDA context and nvJPEG decoder (torchvision keeps one decoder per process, behind a lock,
  and rebuilds it when the device changes, so threads cannot scale it). Each process keeps one
  batch in flight: while the card runs batch i, the host decodes and queues batch i+1 (with
  ``decode: hw`` the card's JPEG engines decode it beside the forward pass).
* ``mode="thread"``: replicas in this process (CPU hosts and tests).

Usage::

    bulk = BulkPredictor(profile, devices=["cuda:0", "cuda:1"], batch_size=256, replicas_per_device=2)
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


class Replica:
    """One device's copy of a tier: its experts and the on-device consensus."""

    def __init__(self, profile: Profile, tier: int, device: str):
        self.profile = profile
        self.tier = profile.tiers[tier]
        self.device = device
        cons = profile.consensus
        self.weights = np.array([cons.weights.get(n, 1.0) for n in self.tier.experts], dtype=np.float32)
        self.norm = float(np.abs(self.weights).sum()) if cons.normalize else 1.0
        self.bias, self.temperature = float(cons.bias), float(cons.temperature)
        self.iso = (np.asarray(cons.isotonic.x), np.asarray(cons.isotonic.y)) if cons.isotonic else None
        self.experts: typing.Dict[str, typing.Any] = {}
        self._w = None

    def load(self) -> None:
        for name in self.tier.experts:
            spec = self.profile.expert(name).model_copy(update={"device": self.device})
            e = create_expert(spec, self.profile)
            if not hasattr(e, "predict_encoded"):
                raise TypeError(f"expert {name} ({spec.family}) has no bulk path (predict_encoded)")
            e.load(self.device)
            e.warmup()
            self.experts[name] = e

    def close(self) -> None:
        for e in self.experts.values():
            e.close()

    def _pool(self, logits):
        """Weighted log-odds pooling on the device: E x (N,) logits -> (N,) probabilities."""
        import torch

        z = torch.stack(logits)
        if self._w is None:
            self._w = torch.as_tensor(self.weights, device=z.device).view(-1, 1)
        pooled = (self._w * z.clamp(-9.21, 9.21)).sum(0) / self.norm
        if self.iso is not None:  # fitted isotonic map of the pooled logit: applied on the host
            return torch.from_numpy(np.interp(pooled.float().cpu().numpy(), *self.iso).astype(np.float32))
        return torch.sigmoid((pooled + self.bias) / self.temperature)

    def run(self, datas: typing.Sequence[bytes]) -> np.ndarray:
        try:
            return self._run(datas)
        except ValueError:  # undecodable images inside: answer them one by one
            out = np.empty(len(datas), np.float32)
            for i, d in enumerate(datas):
                try:
                    out[i] = self._run([d])[0]
                except ValueError:
                    out[i] = self.profile.fallback_probability
            return out

    def _run(self, datas) -> np.ndarray:
        return self.finish(self._launch(datas))

    def launch(self, datas: typing.Sequence[bytes]) -> tuple:
        """Queue a batch on the device and return at once with a handle for :meth:`finish`.

        The probabilities come back through pinned memory with an event, so the host can decode
        and queue the next batch while this one runs (decode engines and SMs both kept busy)."""
        try:
            return self._launch(datas)
        except ValueError:  # undecodable images inside: the slow, image-by-image way, now
            return (self.run(datas), None)

    def _launch(self, datas) -> tuple:
        p = self._pool([e.predict_encoded(datas) for e in self.experts.values()]).float()
        if not p.is_cuda:
            return (p.numpy(), None)
        import torch

        host = torch.empty(p.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(p, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(p.device))
        return (host, done)

    @staticmethod
    def finish(handle: tuple) -> np.ndarray:
        """Wait for a launched batch and return its probabilities."""
        value, done = handle
        if done is None:
            return np.asarray(value, np.float32)
        done.synchronize()
        return value.numpy().copy()


def _worker(profile_data: dict, tier: int, device: str, jobs, results) -> None:
    """A replica process: load, say ready, then answer (start, datas) jobs until None."""
    from natix_miner.offline import enforce_offline

    enforce_offline()
    try:
        rep = Replica(Profile.model_validate(profile_data), tier, device)
        rep.load()
    except BaseException as exc:
        results.put(("error", device, repr(exc)))
        return
    results.put(("ready", device, None))
    pending = None  # (start, handle): one batch in flight while the next is decoded and queued

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            start, handle = pending
            pending = None
            try:
                results.put(("ok", start, rep.finish(handle)))
            except BaseException as exc:
                results.put(("error", start, repr(exc)))

    while True:
        if pending is None:
            job = jobs.get()
        else:
            try:
                job = jobs.get_nowait()
            except queue.Empty:  # nothing to overlap with: hand the finished batch back
                flush()
                continue
        if job is None:
            flush()
            break
        start, datas = job
        try:
            handle = rep.launch(datas)
        except BaseException as exc:
            flush()
            results.put(("error", start, repr(exc)))
            continue
        flush()
        pending = (start, handle)
    rep.close()


class BulkPredictor:
    def __init__(self, profile: Profile, devices: typing.Sequence[str], tier: int = 0, batch_size: int = 256,
                 replicas_per_device: int = 1, mode: typing.Optional[str] = None):
        self.profile = profile
        self.tier_index = tier
        self.devices = list(devices)
        self.batch_size = int(batch_size)
        self.per_device = max(1, int(replicas_per_device))
        gpu = any(d.startswith("cuda") for d in self.devices)
        self.mode = mode or ("process" if gpu else "thread")
        if self.mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', got {self.mode!r}")
        self.replicas: typing.List[Replica] = []
        self._procs: list = []
        self._jobs = self._results = None

    def load(self) -> None:
        slots = [d for d in self.devices for _ in range(self.per_device)]
        if self.mode == "thread":
            for dev in slots:
                r = Replica(self.profile, self.tier_index, dev)
                r.load()
                self.replicas.append(r)
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        data = self.profile.model_dump()
        for dev in slots:
            p = ctx.Process(target=_worker, args=(data, self.tier_index, dev, self._jobs, self._results),
                            daemon=True)
            p.start()
            self._procs.append(p)
        for _ in slots:
            kind, dev, err = self._results.get(timeout=900)
            if kind != "ready":
                self.close()
                raise RuntimeError(f"replica on {dev} failed to load: {err}")

    def close(self) -> None:
        for r in self.replicas:
            r.close()
        self.replicas.clear()
        for _ in self._procs:
            self._jobs.put(None)
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
        self._procs.clear()

    def predict(self, datas: typing.Sequence[bytes], progress: bool = False) -> np.ndarray:
        if not self.replicas and not self._procs:
            raise RuntimeError("call load() first")
        n = len(datas)
        out = np.full(n, np.nan, np.float32)
        spans = [(a, min(n, a + self.batch_size)) for a in range(0, n, self.batch_size)]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="img", desc="bulk")
        if self.mode == "process":
            for a, b in spans:
                self._jobs.put((a, list(datas[a:b])))
            for _ in spans:
                kind, a, val = self._results.get()
                if kind != "ok":
                    raise RuntimeError(f"replica failed on batch at {a}: {val}")
                out[a:a + len(val)] = val
                if bar is not None:
                    bar.update(len(val))
        else:
            todo: "queue.Queue[typing.Tuple[int, int]]" = queue.Queue()
            for s in spans:
                todo.put(s)
            lock = threading.Lock()

            def work(rep: Replica) -> None:
                while True:
                    try:
                        a, b = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[a:b] = rep.run(datas[a:b])
                    if bar is not None:
                        with lock:
                            bar.update(b - a)

            with concurrent.futures.ThreadPoolExecutor(len(self.replicas)) as pool:
                for f in [pool.submit(work, r) for r in self.replicas]:
                    f.result()
        if bar is not None:
            bar.close()
        out[~np.isfinite(out)] = self.profile.fallback_probability
        return np.clip(out, 0.0, 1.0)
