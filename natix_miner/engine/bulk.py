"""The throughput path: many JPEGs -> P(roadwork) through the profile's cascade, on every device.

The online path (:meth:`Engine.predict`) is built for one validator image at a time under a
deadline. Operators who label datasets, evaluate profiles or serve many hotkeys need images per
second instead. ``BulkPredictor`` runs replicas of the cascade's experts and feeds each whole
batches of encoded JPEGs: nvJPEG decoding, normalisation and the forward stay on the card, and one
logit per expert and image comes back. The answer is the online engine's for the same evidence:
the same :class:`~natix_miner.engine.policy.CascadePolicy` pools each tier with its stage rule and
sends the images still inside the escalation band on to the next tier (run on just those images).

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
    probs = bulk.predict(list_of_jpeg_bytes)        # np.ndarray (N,) float64 in [0, 1], never 0.5
    probs, tiers_run = bulk.predict(datas, with_tiers=True)   # and how many tiers each image ran
    bulk.close()
    BulkPredictor(profile, ["cuda:0"], tiers=1)      # the first tier only (later tiers not bulk-capable)

Experts used here must implement ``predict_encoded(datas) -> (N,) logits tensor`` (the timm
family does); ``tiers=k`` runs the first k tiers only. Images the GPU decoder refuses are decoded on the CPU; an image nobody can decode
gets the profile's fallback probability.
"""

import concurrent.futures
import logging
import queue
import threading
import typing

import numpy as np

from natix_miner.config import Profile
from natix_miner.engine.policy import CascadePolicy
from natix_miner.experts import create_expert

log = logging.getLogger("natix_miner.engine.bulk")


class BulkReplica:
    """One device's copy of the cascade's first ``tiers`` tiers (default all): their experts, and
    the profile's :class:`~natix_miner.engine.policy.CascadePolicy` deciding which images climb."""

    def __init__(self, profile: Profile, device: str, tiers: typing.Optional[int] = None):
        self.profile = profile
        self.tiers = profile.tiers[:tiers] if tiers else list(profile.tiers)
        self.device = device
        self.policy = CascadePolicy(profile)
        self.experts: typing.Dict[str, typing.Any] = {}

    def load(self) -> None:
        for i, tier in enumerate(self.tiers):
            for name in tier.experts:
                spec = self.profile.expert(name).model_copy(update={"device": self.device})
                e = create_expert(spec, self.profile)
                if not hasattr(e, "predict_encoded"):
                    raise TypeError(f"expert {name} ({spec.family}) of tier {tier.name} has no bulk path "
                                    f"(predict_encoded); run the first {i} tier(s) only (tiers={i})"
                                    if i else f"expert {name} ({spec.family}) has no bulk path (predict_encoded)")
                e.load(self.device)
                e.warmup()
                self.experts[name] = e

    def close(self) -> None:
        for e in self.experts.values():
            e.close()

    def _forward(self, tier: int, datas: typing.Sequence[bytes]):
        """One tier's experts on the device: (experts, N) float64 logits, still on the device."""
        import torch

        return torch.stack([torch.as_tensor(self.experts[n].predict_encoded(datas)).reshape(-1).double()
                            for n in self.tiers[tier].experts])

    def _host_logits(self, tier: int, datas: typing.Sequence[bytes]) -> np.ndarray:
        """A later tier on the images still climbing: (experts, N) logits on the host; an image
        its experts cannot decode gets no opinion from them (NaN), as a failed expert online."""
        try:
            return self._forward(tier, datas).cpu().numpy()
        except ValueError:
            out = np.full((len(self.tiers[tier].experts), len(datas)), np.nan)
            for i, d in enumerate(datas):
                try:
                    out[:, i] = self._forward(tier, [d]).cpu().numpy()[:, 0]
                except ValueError:
                    pass
            return out

    def _cascade(self, datas: typing.Sequence[bytes], first: np.ndarray) -> typing.Tuple[np.ndarray, np.ndarray]:
        """The policy over the batch, ``first`` being tier 0's logits; later tiers run on the rows
        still in their band. Returns (probabilities (N,) float64, tiers run (N,))."""

        def tier_logits(i: int, rows: np.ndarray) -> typing.Dict[str, np.ndarray]:
            z = first[:, rows] if i == 0 else self._host_logits(i, [datas[r] for r in rows])
            return dict(zip(self.tiers[i].experts, z))

        out = self.policy.cascade(len(datas), tier_logits, tiers=len(self.tiers))
        return out.probabilities, out.depth

    def run(self, datas: typing.Sequence[bytes]) -> typing.Tuple[np.ndarray, np.ndarray]:
        """Probabilities and tiers run for a batch, now (undecodable images: the fallback, 0 tiers)."""
        return self.finish(self.launch(datas))

    def _one_by_one(self, datas: typing.Sequence[bytes]) -> typing.Tuple[np.ndarray, np.ndarray]:
        probs = np.empty(len(datas), np.float64)
        depth = np.zeros(len(datas), np.int64)
        for i, d in enumerate(datas):
            try:
                probs[i:i + 1], depth[i:i + 1] = self._cascade([d], self._forward(0, [d]).cpu().numpy())
            except ValueError:
                probs[i] = self.policy.answer(None)
        return probs, depth

    def launch(self, datas: typing.Sequence[bytes]) -> tuple:
        """Queue tier 0 of a batch on the device and return at once with a handle for :meth:`finish`.

        Tier 0's logits come back through pinned memory with an event, so the host can decode
        and queue the next batch while this one runs (decode engines and SMs both kept busy); the
        images that escalate run their later tiers in :meth:`finish`."""
        try:
            z = self._forward(0, datas)
        except ValueError:  # undecodable images inside: the slow, image-by-image way, now
            return (datas, self._one_by_one(datas), None)
        if not z.is_cuda:
            return (datas, z.numpy(), None)
        import torch

        host = torch.empty(z.shape, dtype=z.dtype, pin_memory=True)
        host.copy_(z, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(z.device))
        return (datas, host, done)

    def finish(self, handle: tuple) -> typing.Tuple[np.ndarray, np.ndarray]:
        """Wait for a launched batch; run the cascade's later tiers; (probabilities, tiers run)."""
        datas, value, done = handle
        if isinstance(value, tuple):  # answered image by image in launch()
            return value
        if done is not None:
            done.synchronize()
        return self._cascade(datas, np.array(value, dtype=np.float64))


def _worker(profile_data: dict, tiers: typing.Optional[int], device: str, jobs, results) -> None:
    """A replica process: load, say ready, then answer (start, datas) jobs until None."""
    from natix_miner.offline import enforce_offline

    enforce_offline()
    try:
        rep = BulkReplica(Profile.model_validate(profile_data), device, tiers)
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
    """Replicas of the cascade on ``devices`` (``replicas_per_device`` each), fed whole batches.

    ``tiers``: run the first ``tiers`` tiers only (default: all; every expert of them needs
    ``predict_encoded``); the answer is then the online engine's when the later tiers are skipped."""

    def __init__(self, profile: Profile, devices: typing.Sequence[str], tiers: typing.Optional[int] = None,
                 batch_size: int = 256, replicas_per_device: int = 1, mode: typing.Optional[str] = None):
        if tiers is not None and not 1 <= int(tiers) <= len(profile.tiers):
            raise ValueError(f"tiers must be 1..{len(profile.tiers)} (the profile's tiers), got {tiers}")
        self.profile = profile
        self.tiers = None if tiers is None else int(tiers)
        self.devices = list(devices)
        self.batch_size = int(batch_size)
        self.per_device = max(1, int(replicas_per_device))
        gpu = any(d.startswith("cuda") for d in self.devices)
        self.mode = mode or ("process" if gpu else "thread")
        if self.mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', got {self.mode!r}")
        self.replicas: typing.List[BulkReplica] = []
        self._procs: list = []
        self._jobs = self._results = None

    def load(self) -> None:
        slots = [d for d in self.devices for _ in range(self.per_device)]
        if self.mode == "thread":
            for dev in slots:
                r = BulkReplica(self.profile, dev, self.tiers)
                r.load()
                self.replicas.append(r)
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        data = self.profile.model_dump()
        for dev in slots:
            p = ctx.Process(target=_worker, args=(data, self.tiers, dev, self._jobs, self._results),
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

    def predict(self, datas: typing.Sequence[bytes], progress: bool = False,
                with_tiers: bool = False) -> typing.Union[np.ndarray, typing.Tuple[np.ndarray, np.ndarray]]:
        """(N,) float64 probabilities in input order; ``with_tiers``: also (N,) the number of tiers
        each image ran (0: undecodable, answered with the fallback)."""
        if not self.replicas and not self._procs:
            raise RuntimeError("call load() first")
        n = len(datas)
        out = np.full(n, np.nan, np.float64)
        depth = np.zeros(n, np.int64)
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
                probs, ran = val
                out[a:a + len(probs)], depth[a:a + len(probs)] = probs, ran
                if bar is not None:
                    bar.update(len(probs))
        else:
            todo: "queue.Queue[typing.Tuple[int, int]]" = queue.Queue()
            for s in spans:
                todo.put(s)
            lock = threading.Lock()

            def work(rep: BulkReplica) -> None:
                while True:
                    try:
                        a, b = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[a:b], depth[a:b] = rep.run(datas[a:b])
                    if bar is not None:
                        with lock:
                            bar.update(b - a)

            with concurrent.futures.ThreadPoolExecutor(len(self.replicas)) as pool:
                for f in [pool.submit(work, r) for r in self.replicas]:
                    f.result()
        if bar is not None:
            bar.close()
        return (out, depth) if with_tiers else out
