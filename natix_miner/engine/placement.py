"""Assign expert replicas to devices within a per-GPU memory budget, and print where all went.

The budget of a card is measured at start: ``gpu_memory_fraction * total - memory already in use
by anything else`` (other processes, a display). ``device: cuda:1`` pins a replica (a pin over the
budget is allowed but logged); ``auto`` / ``cuda`` picks the card with the most budget left that
fits the expert's ``memory_gb`` hint, preferring a card that holds no other replica of the same
expert. After loading, :meth:`record` replaces the hint with what loading really took (CUDA
allocations plus device-wide free memory, so out-of-process engines such as vLLM count too).
No GPU visible: every replica goes to the CPU (a ``cuda:N`` pin too, with a warning, unless the
expert sets ``options.require_gpu``).

Usage::

    plan = Placement(0.9)                                   # inventory from torch.cuda
    plan = Placement(0.9, inventory={"cuda:0": 80 * GiB})   # or given (tests, dry runs)
    devices = plan.assign(spec)                             # one device per replica
    plan.record(spec.name, 0, devices[0], measured_bytes)
    print(plan.table())
    Placement(0.9, inventory=...).plan(profile.experts)     # a dry run on the hints alone
"""

import dataclasses
import logging
import typing

from natix_miner.config import ExpertSpec

log = logging.getLogger("natix_miner.engine.placement")

GiB = 1024 ** 3


class PlacementError(RuntimeError):
    """No device can hold the expert, or a pinned device does not exist."""


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - broken driver
        return None


def detect_gpus() -> typing.Dict[str, typing.Tuple[int, int]]:
    """``{"cuda:N": (total_bytes, free_bytes)}`` for every visible GPU (empty without CUDA)."""
    torch = _cuda()
    out: typing.Dict[str, typing.Tuple[int, int]] = {}
    if torch is None:
        return out
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out[f"cuda:{i}"] = (int(total), int(free))
    return out


@dataclasses.dataclass
class Placed:
    expert: str
    replica: int
    device: str
    bytes: int
    total: int  # card size in bytes (0 for cpu)
    measured: bool = False
    of: int = 1  # replicas of this expert

    @property
    def label(self) -> str:
        return self.expert if self.of == 1 else f"{self.expert}[{self.replica}]"


class Placement:
    def __init__(self, gpu_memory_fraction: float = 0.9,
                 inventory: typing.Optional[typing.Mapping[str, int]] = None,
                 in_use: typing.Optional[typing.Mapping[str, int]] = None):
        """``inventory``: device -> total bytes (default: the visible GPUs); ``in_use``: device ->
        bytes already taken by others at start (default: measured when detected, else 0)."""
        self.fraction = gpu_memory_fraction
        if inventory is None:
            found = detect_gpus()
            inventory = {d: total for d, (total, _) in found.items()}
            if in_use is None:
                in_use = {d: total - free for d, (total, free) in found.items()}
        self.gpus: typing.Dict[str, int] = {d: int(v) for d, v in inventory.items()}
        others = dict(in_use or {})
        self.budget: typing.Dict[str, int] = {
            d: max(0, int(total * self.fraction) - int(others.get(d, 0))) for d, total in self.gpus.items()}
        self.used: typing.Dict[str, int] = {d: 0 for d in self.gpus}
        self.placed: typing.List[Placed] = []

    # -- queries -----------------------------------------------------------------------------
    def budget_left(self, device: str) -> int:
        return self.budget.get(device, 0) - self.used.get(device, 0)

    @staticmethod
    def hint_bytes(spec: ExpertSpec) -> int:
        return int((spec.memory_gb or 0.0) * GiB)

    # -- assignment --------------------------------------------------------------------------
    def assign(self, spec: ExpertSpec) -> typing.List[str]:
        """Choose a device for every replica of ``spec`` and reserve its hinted memory."""
        need = self.hint_bytes(spec)
        chosen: typing.List[str] = []
        for i, want in enumerate(spec.replica_devices):
            dev = self._choose(spec, want, need, chosen)
            chosen.append(dev)
            if dev in self.used:
                self.used[dev] += need
            self.placed.append(Placed(spec.name, i, dev, need, self.gpus.get(dev, 0), of=len(spec.replica_devices)))
        return chosen

    def _choose(self, spec: ExpertSpec, want: str, need: int, taken: typing.List[str]) -> str:
        if want == "cpu":
            return "cpu"
        if not self.gpus:
            if want.startswith("cuda:") and spec.options.get("require_gpu"):
                raise PlacementError(f"expert {spec.name} requires {want} but no GPU is visible")
            if want.startswith("cuda:"):
                log.warning("expert %s asks for %s but no GPU is visible: using the CPU", spec.name, want)
            return "cpu"
        if want.startswith("cuda:"):
            if want not in self.gpus:
                raise PlacementError(f"expert {spec.name}: {want} does not exist (have {sorted(self.gpus)})")
            if need > self.budget_left(want):
                log.warning("expert %s pinned to %s needs %.1f GiB; %.1f GiB of budget left there",
                            spec.name, want, need / GiB, self.budget_left(want) / GiB)
            return want
        fits = [d for d in self.gpus if self.budget_left(d) >= need]
        if not fits:
            best = max(self.gpus, key=self.budget_left)
            raise PlacementError(f"expert {spec.name} needs {need / GiB:.1f} GiB; the most budget left is "
                                 f"{self.budget_left(best) / GiB:.1f} GiB on {best}")
        fresh = [d for d in fits if d not in taken] or fits  # spread replicas over cards
        return max(fresh, key=lambda d: (self.budget_left(d), -int(d.split(":")[1])))

    def record(self, expert: str, replica: int, device: str, nbytes: int) -> None:
        """Replace a replica's hinted memory with the measured figure (ignored when 0)."""
        for p in self.placed:
            if p.expert == expert and p.replica == replica:
                if nbytes > 0:
                    if p.device in self.used:
                        self.used[p.device] += int(nbytes) - p.bytes
                    p.bytes = int(nbytes)
                    p.measured = True
                return
        if device in self.used:
            self.used[device] += int(nbytes)
        self.placed.append(Placed(expert, replica, device, int(nbytes), self.gpus.get(device, 0), nbytes > 0))

    def release(self, expert: str, replica: int) -> None:
        """Forget a replica that failed to load."""
        for p in list(self.placed):
            if p.expert == expert and p.replica == replica:
                if p.device in self.used:
                    self.used[p.device] -= p.bytes
                self.placed.remove(p)

    def plan(self, experts: typing.Sequence[ExpertSpec]) -> typing.List[Placed]:
        """Dry run on the hints: the rows :meth:`table` would print (in load order)."""
        for spec in load_order(experts):  # pass profile.tiered_experts for what the engine loads
            self.assign(spec)
        return list(self.placed)

    # -- reporting ---------------------------------------------------------------------------
    def over_budget(self) -> typing.Dict[str, typing.Tuple[int, int, int]]:
        """GPUs holding more than their budget (pinned experts may): device -> (used, budget, total) bytes."""
        return {d: (self.used[d], self.budget[d], total) for d, total in self.gpus.items()
                if self.used[d] > self.budget[d]}

    def devices(self) -> typing.Dict[str, dict]:
        out = {}
        for d, total in self.gpus.items():
            out[d] = {"total_bytes": total, "budget_bytes": self.budget[d], "placed_bytes": self.used[d],
                      "share_of_card": round(self.used[d] / total, 4) if total else 0.0,
                      "experts": [p.label for p in self.placed if p.device == d]}
        cpu = [p.label for p in self.placed if p.device == "cpu"]
        if cpu:
            out["cpu"] = {"experts": cpu}
        return out

    def table(self) -> str:
        rows = [("expert", "device", "memory", "share of card")]
        for p in self.placed:
            share = f"{100.0 * p.bytes / p.total:.1f}%" if p.total else "-"
            if not p.bytes and not p.measured:
                mem = "?"
            else:
                mem = f"{p.bytes / GiB:.2f} GiB" if p.bytes >= GiB else f"{p.bytes / 1024 ** 2:.1f} MiB"
                mem += "" if p.measured else " (hint)"
            rows.append((p.label, p.device, mem, share))
        for d, total in self.gpus.items():
            if total:
                rows.append((f"= {d} total", d, f"{self.used[d] / GiB:.2f} GiB",
                             f"{100.0 * self.used[d] / total:.1f}% (budget {100.0 * self.budget[d] / total:.0f}%)"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def load_order(experts: typing.Sequence[ExpertSpec]) -> typing.List[ExpertSpec]:
    """Largest memory hint first (engines that reserve a share of a card, like vLLM, must start
    while the card is still empty); profile order otherwise."""
    return sorted(experts, key=lambda e: -(e.memory_gb or 0.0))


def measure_load(device: str, fn: typing.Callable[[], None]) -> int:
    """Run ``fn`` (a load) and return the memory it took on ``device`` (0 on CPU)."""
    torch = _cuda() if device.startswith("cuda") else None
    if torch is None:
        fn()
        return 0
    idx = torch.device(device).index or 0
    torch.cuda.synchronize(idx)
    before_alloc = torch.cuda.memory_allocated(idx)
    before_free, _ = torch.cuda.mem_get_info(idx)
    fn()
    torch.cuda.synchronize(idx)
    after_free, _ = torch.cuda.mem_get_info(idx)
    by_torch = torch.cuda.memory_allocated(idx) - before_alloc
    device_wide = before_free - after_free
    return int(max(0, by_torch, device_wide))


def live_memory() -> typing.Dict[str, dict]:
    """Per-GPU memory right now (for status): allocated by this process and free on the card."""
    torch = _cuda()
    out: typing.Dict[str, dict] = {}
    if torch is None:
        return out
    for i in range(torch.cuda.device_count()):
        try:
            free, total = torch.cuda.mem_get_info(i)
            out[f"cuda:{i}"] = {"allocated_bytes": int(torch.cuda.memory_allocated(i)),
                                "reserved_bytes": int(torch.cuda.memory_reserved(i)),
                                "free_bytes": int(free), "total_bytes": int(total)}
        except Exception as exc:  # pragma: no cover - a sick card must not break status
            out[f"cuda:{i}"] = {"error": str(exc)}
    return out
