"""The cascade as a Ray Serve application: one deployment per expert, one ingress that runs the cascade.

Each tiered expert of the profile becomes a deployment (``expert-NAME``) with one replica per
``ExpertSpec.replica_devices`` entry and Ray resources from its device (a ``cuda`` expert asks for
``num_gpus``: ``memory_gb / gpu_memory_gb`` of a card, or a whole card without a hint; a ``cpu`` one
for ``cpu_per_replica`` cores); inside a replica the expert loads on the device Ray assigned
(``CUDA_VISIBLE_DEVICES``: ``cuda``) and batches concurrent calls, with Ray Serve's ``@serve.batch``
(``batching="serve"``, the default: it measured better, docs/scaling.md) or the engine's own
:class:`~natix_miner.engine.batching.MicroBatcher` (``batching="engine"``). The ingress
(``cascade``) is the ordinary :class:`~natix_miner.engine.engine.Engine`, whose experts are
:class:`RemoteExpert` proxies that call the expert deployments through their ``DeploymentHandle``:
the deadline, the tiers, the escalation band, consensus, breakers, the image cache and the
never-0.5 fallback are the engine's, unchanged.

Usage (what ``natix-miner engine serve`` does; ``ray`` imported here, never at import time)::

    from natix_miner.engine.ray_serve import deploy
    summary = deploy(load_profile("demo-cpu"), address="127.0.0.1:6379", app="natix")
    # a driver on the cluster: await serve.get_app_handle("natix").predict.remote(jpeg, 6.5) -> PredictResult
"""

import asyncio
import dataclasses
import logging
import math
import os
import time
import typing

from natix_miner.config import ExpertSpec, Profile
from natix_miner.experts.base import Evidence, Expert

log = logging.getLogger("natix_miner.engine.ray")

INGRESS = "cascade"
BATCHING = ("serve", "engine")
# variables a replica needs to behave like this process (offline hub policy, model store, stand-ins)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "YOLO_OFFLINE",
                 "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "HF_HOME", "HF_HUB_CACHE", "NATIX_MODEL_DIR",
                 "NATIX_ROOT", "NATIX_ALLOW_DOWNLOADS", "NATIX_STAND_INS", "NATIX_DEVICE", "OMP_NUM_THREADS")


@dataclasses.dataclass
class DeploymentPlan:
    """One deployment of the application: its name, replicas and Ray actor resources."""

    name: str
    expert: typing.Optional[str]  # None: the ingress
    num_replicas: int
    num_cpus: float
    num_gpus: float
    device: str  # what the replica loads on: "cpu" or "cuda" (the card Ray assigned)

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.name}: {self.num_replicas} replica(s) x ({self.num_cpus:g} CPU{gpus}) on {self.device}"


def expert_resources(spec: ExpertSpec, gpu_memory_gb: float = 80.0, cpu_per_replica: float = 1.0,
                     has_gpus: bool = True) -> DeploymentPlan:
    """Ray resources of one expert's deployment, from its profile entry.

    ``device: cuda[:N]`` (or ``auto`` on a cluster with GPUs) -> ``num_gpus`` = ``memory_gb /
    gpu_memory_gb`` (two experts with 30 GB hints share an 80 GB card) or 1 without a hint, and
    0.5 CPU; ``cpu`` -> ``cpu_per_replica`` cores. Replicas: one per ``replica_devices`` entry.
    """
    devices = spec.replica_devices
    gpu = any(d.startswith("cuda") for d in devices) or (has_gpus and any(d == "auto" for d in devices))
    if gpu:
        share = 1.0 if not spec.memory_gb else min(1.0, math.ceil(spec.memory_gb / gpu_memory_gb * 100) / 100)
        return DeploymentPlan(f"expert-{spec.name}", spec.name, len(devices), 0.5, max(0.01, share), "cuda")
    return DeploymentPlan(f"expert-{spec.name}", spec.name, len(devices), cpu_per_replica, 0.0, "cpu")


def plan(profile: Profile, skip: typing.Iterable[str] = (), gpu_memory_gb: float = 80.0,
         cpu_per_replica: float = 1.0, ingress_cpus: float = 0.5, ingress_replicas: int = 1,
         has_gpus: bool = True) -> typing.List[DeploymentPlan]:
    """Every deployment of the application (the ingress last); experts in ``skip`` are left out."""
    out = [expert_resources(s, gpu_memory_gb, cpu_per_replica, has_gpus)
           for s in profile.tiered_experts if s.name not in set(skip)]
    out.append(DeploymentPlan(INGRESS, None, ingress_replicas, ingress_cpus, 0.0, "cpu"))
    return out


def ingress_profile(profile: Profile, remote: typing.Iterable[str]) -> Profile:
    """The profile the ingress engine runs: every remote expert is one CPU-side proxy that passes each
    image on at once (no batching, many calls in flight); the expert deployment batches."""
    remote = set(remote)
    experts = [s.model_copy(update={"device": "cpu", "devices": None, "replicas": 1, "max_batch": 1,
                                    "max_wait_ms": 0.0, "concurrency": 256, "memory_gb": None})
               if s.name in remote else s for s in profile.experts]
    return profile.model_copy(update={"experts": experts})


def plain(value: typing.Any) -> typing.Any:
    """``value`` as builtins only: numpy scalars and arrays become numbers and lists, containers are
    walked, anything else (a tensor, an object) becomes its ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__module__ == "numpy":
        return plain(value.tolist())
    return str(value)


class RemoteExpert(Expert):
    """An expert that lives in a Ray Serve deployment: ``predict_batch_async`` sends each image's
    encoded bytes through the deployment's handle (Ray routes to the least busy replica)."""

    family = "ray_remote"
    is_async = True

    def __init__(self, spec: ExpertSpec, profile: Profile, handle):
        super().__init__(spec, profile)
        self.handle = handle

    def load(self, device: str) -> None:
        self.device = f"ray:expert-{self.name}"

    def memory_bytes(self) -> int:
        return 0  # held by the deployment's replicas, not here

    async def predict_batch_async(self, images) -> typing.List[Evidence]:
        return list(await asyncio.gather(*(self.handle.predict.remote(img.data) for img in images)))


class ExpertServer:
    """Body of an expert deployment: loads one expert on the replica's device and batches calls.

    The constructor is async (Ray Serve awaits it): a replica loads and warms its model before Ray
    marks it running, so no request ever reaches a replica that is still loading (a restarted or
    added replica included), and ``serve.run`` returns once every replica of every expert has loaded.
    """

    async def __init__(self, profile: Profile, name: str, device: str, batching: str = "serve"):
        from natix_miner.experts import create_expert

        if batching not in BATCHING:
            raise ValueError(f"batching {batching!r}: expected one of {', '.join(BATCHING)}")
        self.spec = next(s for s in profile.experts if s.name == name)
        self.max_pixels = profile.max_pixels
        self.expert = create_expert(self.spec, profile)
        self.device = device
        self.batching = batching
        self._batcher = None
        self._pool = None
        await self._start()

    async def _start(self) -> None:
        from natix_miner.engine.batching import DaemonExecutor, MicroBatcher

        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await loop.run_in_executor(None, self.expert.load, self.device)
        await self.expert.start_async()
        if self.batching == "engine":
            self._batcher = MicroBatcher(self.expert, self.spec.max_batch, self.spec.max_wait_ms,
                                         self.spec.concurrency)
            self._batcher.start()
            await self._batcher.warmup()
        else:
            from ray import serve

            self._pool = DaemonExecutor(1, name=f"expert-{self.spec.name}")
            self._batched = serve.batch(max_batch_size=self.spec.max_batch,
                                        batch_wait_timeout_s=self.spec.max_wait_ms / 1000.0)(self._run_batch)
            await loop.run_in_executor(self._pool, self.expert.warmup)
        log.info("expert %s (%s) loaded on %s in %.1fs, batching: %s", self.spec.name, self.spec.family,
                 self.device, time.perf_counter() - t0, self.batching)

    async def ready(self) -> bool:
        """True: a replica that answers has loaded (its constructor did)."""
        return True

    async def _run_batch(self, images) -> typing.List[Evidence]:
        if self.expert.is_async:
            return list(await self.expert.predict_batch_async(images))
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(self._pool, self.expert.predict_batch, images))

    async def predict(self, data: bytes) -> Evidence:
        from natix_miner.engine.batching import _coerce
        from natix_miner.imaging.decode import probe

        img = probe(data, max_pixels=self.max_pixels)
        if self._batcher is not None:
            return await self._batcher.submit(img)
        return _coerce(await self._batched(img))

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose batcher died is restarted."""
        if self._batcher is not None and self._batcher._task is not None and self._batcher._task.done():
            raise RuntimeError(f"batcher of {self.spec.name} stopped")


class CascadeServer:
    """Body of the ingress deployment: the engine, with :class:`RemoteExpert` proxies for the
    deployed experts (keyword arguments: expert name -> ``DeploymentHandle``)."""

    def __init__(self, profile: Profile, **handles):
        from natix_miner.engine.engine import Engine

        experts = {name: RemoteExpert(next(s for s in profile.experts if s.name == name), profile, h)
                   for name, h in handles.items()}
        self.handles = handles
        self.engine = Engine(ingress_profile(profile, handles), experts=experts)
        self._lock: typing.Optional[asyncio.Lock] = None

    async def ready(self) -> bool:
        """Start the engine once every expert deployment has loaded (first call; ``deploy`` makes it)."""
        if not self.engine.ready:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self.engine.ready:
                    await asyncio.gather(*(h.ready.remote() for h in self.handles.values()))
                    await self.engine.start()
        return True

    async def predict(self, image: typing.Union[bytes, str], budget_s: float, all_tiers: bool = False):
        """One image with ``budget_s`` seconds left (clocks differ between machines: a budget, not a
        deadline) -> :class:`~natix_miner.engine.result.PredictResult`."""
        if not self.engine.ready:
            await asyncio.wait_for(self.ready(), timeout=max(0.001, budget_s))
        res = await self.engine.predict(image, time.monotonic() + max(0.0, budget_s), all_tiers=all_tiers)
        for ev in res.evidence.values():  # the miner unpickles this: plain values only (never a tensor: no torch there)
            ev.detail = plain(ev.detail)
        return res

    def status(self) -> dict:
        """The ingress engine's ``status()`` plus its ``degraded_report`` (``degraded``)."""
        st = self.engine.status()
        st["degraded"] = self.engine.degraded_report() if self.engine.ready else []
        st["engine"] = "ray"
        return st


def build_app(profile: Profile, skip: typing.Iterable[str] = (), batching: str = "serve",
              gpu_memory_gb: float = 80.0, cpu_per_replica: float = 1.0, ingress_cpus: float = 0.5,
              ingress_replicas: int = 1, has_gpus: bool = True):
    """The Ray Serve application (``serve.run`` it) and its :class:`DeploymentPlan` list."""
    from ray import serve

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    options = {"runtime_env": {"env_vars": env}} if env else {}
    plans = plan(profile, skip, gpu_memory_gb, cpu_per_replica, ingress_cpus, ingress_replicas, has_gpus)
    handles = {}
    for p in plans[:-1]:
        spec = next(s for s in profile.experts if s.name == p.expert)
        dep = serve.deployment(ExpertServer).options(
            name=p.name, num_replicas=p.num_replicas,
            max_ongoing_requests=max(64, spec.max_batch * 4 * max(1, spec.concurrency)),
            ray_actor_options={"num_cpus": p.num_cpus, "num_gpus": p.num_gpus, **options})
        handles[p.expert] = dep.bind(profile, p.expert, p.device, batching)
    ing = plans[-1]
    app = serve.deployment(CascadeServer).options(
        name=INGRESS, num_replicas=ing.num_replicas, max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": ing.num_cpus, "num_gpus": 0, **options}).bind(profile, **handles)
    return app, plans


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise ``ConnectionError`` at once when nothing listens on a ``HOST:PORT`` (``ray.init`` would
    retry for minutes); ``auto`` and ``ray://`` addresses are left to ``ray.init``."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise ConnectionError(f"{address!r} is not HOST:PORT") from None
    except OSError as exc:
        raise ConnectionError(f"nothing answers on {address} ({exc.strerror or exc})") from None


def connect(address: str, namespace: typing.Optional[str] = None) -> None:
    """``ray.init`` on ``address`` quietly (no worker logs on this process's stdout), once; a
    ``HOST:PORT`` where nothing listens is a ``ConnectionError`` at once."""
    import ray

    if not ray.is_initialized():
        reachable(address)
        ray.init(address=address, namespace=namespace, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)


def deploy(profile: Profile, address: str, app: str = "natix", skip: typing.Iterable[str] = (),
           batching: str = "serve", gpu_memory_gb: float = 80.0, cpu_per_replica: float = 1.0,
           ingress_cpus: float = 0.5, ingress_replicas: int = 1, timeout_s: float = 600.0) -> dict:
    """Deploy (or update) the application ``app`` on the cluster at ``address`` and wait until its
    ingress has started its engine (every expert loaded). Returns a summary (plans, seconds)."""
    import ray
    from ray import serve

    t0 = time.perf_counter()
    connect(address)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy to expose or secure
    application, plans = build_app(profile, skip, batching, gpu_memory_gb, cpu_per_replica, ingress_cpus,
                                   ingress_replicas, has_gpus)
    handle = serve.run(application, name=app, route_prefix=None, blocking=False)
    handle.ready.remote().result(timeout_s=timeout_s)
    return {"app": app, "address": address, "profile": profile.name, "batching": batching,
            "deployments": [dataclasses.asdict(p) for p in plans], "seconds": round(time.perf_counter() - t0, 1)}
