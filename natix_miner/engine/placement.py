"""Assign experts to devices within a per-GPU memory budget, and print where everything went.

``device: cuda:1`` in a profile pins an expert; ``device: auto`` (or ``cuda``) picks the GPU with
the most budget left, using the expert's ``memory_gb`` hint when given and otherwise placing it and
measuring what loading it took. No GPU: everything goes to the CPU.

Usage::

    plan = Placement(gpu_memory_fraction=0.9)
    dev = plan.choose(spec)                 # "cuda:0" / "cpu"
    plan.record(spec.name, dev, measured_bytes)
    print(plan.table())
"""

import dataclasses
import typing

from natix_miner.config import ExpertSpec


def _cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@dataclasses.dataclass
class Placed:
    expert: str
    device: str
    bytes: int
    total: int  # card size in bytes (0 for cpu)


class Placement:
    def __init__(self, gpu_memory_fraction: float = 0.9):
        self.fraction = gpu_memory_fraction
        torch = _cuda()
        self.gpus: typing.Dict[str, int] = {}
        if torch is not None:
            for i in range(torch.cuda.device_count()):
                self.gpus[f"cuda:{i}"] = int(torch.cuda.get_device_properties(i).total_memory)
        self.used: typing.Dict[str, int] = {d: 0 for d in self.gpus}
        self.placed: typing.List[Placed] = []

    def budget_left(self, device: str) -> int:
        return int(self.gpus[device] * self.fraction) - self.used.get(device, 0)

    def choose(self, spec: ExpertSpec) -> str:
        want = spec.device
        if want == "cpu":
            return "cpu"
        if not self.gpus:
            if want.startswith("cuda") and want != "cuda" and spec.options.get("require_gpu"):
                raise RuntimeError(f"expert {spec.name} requires {want} but no GPU is visible")
            return "cpu"
        if want.startswith("cuda:"):
            if want not in self.gpus:
                raise RuntimeError(f"expert {spec.name}: {want} does not exist (have {sorted(self.gpus)})")
            return want
        need = int((spec.memory_gb or 0) * 1024 ** 3)
        best = max(self.gpus, key=self.budget_left)
        if self.budget_left(best) < need:
            raise RuntimeError(
                f"expert {spec.name} needs {spec.memory_gb} GB; most budget left is "
                f"{self.budget_left(best) / 1024 ** 3:.1f} GB on {best}")
        return best

    def record(self, expert: str, device: str, nbytes: int) -> None:
        if device in self.used:
            self.used[device] += nbytes
        self.placed.append(Placed(expert, device, int(nbytes), self.gpus.get(device, 0)))

    def table(self) -> str:
        rows = [("expert", "device", "memory", "share of card")]
        for p in self.placed:
            share = f"{100.0 * p.bytes / p.total:.1f}%" if p.total else "-"
            rows.append((p.expert, p.device, f"{p.bytes / 1024 ** 2:.1f} MiB", share))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def measure_load(device: str, fn: typing.Callable[[], None]) -> int:
    """Run ``fn`` (a load) and return the CUDA memory it allocated on ``device`` (0 on CPU)."""
    torch = _cuda() if device.startswith("cuda") else None
    if torch is None:
        fn()
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.memory_allocated(device) - before)
