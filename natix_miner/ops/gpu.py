"""GPU memory per device, for the metrics endpoint. Never imports torch itself and never creates a
CUDA context: it reports only when the engine already imported torch and initialised CUDA.

Usage::

    from natix_miner.ops.gpu import gpu_memory
    for d in gpu_memory():      # [] on CPU-only hosts
        d["device"], d["allocated"], d["reserved"], d["total"], d.get("used")
"""

import sys
import typing


def gpu_memory() -> typing.List[typing.Dict[str, typing.Any]]:
    """One dict per visible CUDA device, in bytes.

    ``allocated`` / ``reserved``: this process's PyTorch caching allocator; ``total``: the card;
    ``used``: whole-device use as the driver sees it (all processes, vLLM's own pools included),
    when NVML is available. Empty when torch is not loaded or CUDA is not initialised.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            d = {
                "device": f"cuda:{i}",
                "name": torch.cuda.get_device_name(i),
                "allocated": int(torch.cuda.memory_allocated(i)),
                "reserved": int(torch.cuda.memory_reserved(i)),
                "total": int(torch.cuda.get_device_properties(i).total_memory),
            }
            try:
                d["used"] = int(torch.cuda.device_memory_used(i))  # NVML; no context created
            except Exception:  # noqa: BLE001 - NVML absent
                pass
            out.append(d)
        return out
    except Exception:  # noqa: BLE001 - metrics must never fail a scrape
        return []
