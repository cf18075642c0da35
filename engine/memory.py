"""Host memory: how much there is, what a dataset or model will take, and out-of-memory errors.

What can be sized before it is allocated (a synthetic set, an npz array, decoded images, a
built-in model) is checked here and refused by key; what cannot is recognised afterwards by
`is_out_of_memory`, so the run reports "out of memory" with advice, never a raw allocator
message. Nothing here imports torch at module level (`mpt --help` stays fast).
"""

from __future__ import annotations

import os
from pathlib import Path

# A training step holds the weights, their gradients and up to two optimizer states
# (Adam's moments): four float32 copies of every parameter.
TRAINING_COPIES = 4

# A cache (the dataset on the device, decoded images in memory) may take under a quarter of
# the memory free now: the rest stays for the model, its activations and everything else.
CACHE_SHARE = 4


def cache_fits(nbytes: int, free: int | None, unknown: bool) -> bool:
    """Whether a cache of `nbytes` takes under CACHE_SHARE of `free` bytes; `unknown` when
    nobody can say how much is free."""
    return unknown if free is None else nbytes < free // CACHE_SHARE


def device_memory_free(device) -> int | None:
    """Bytes free on a torch device: the GPU's, the host's for the CPU; None elsewhere
    (mps and others: no cheap way to ask)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    return host_memory_free() if device.type == "cpu" else None


def host_memory_free() -> int | None:
    """Bytes of memory this process can still take, or None where the system does not say.

    Linux's MemAvailable (free memory plus caches the kernel can drop), lowered to what a
    container's cgroup limit leaves; elsewhere the free pages sysconf reports.
    """
    free = _meminfo_available()
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def host_memory_total() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# cgroup v2, then v1, as a container sees its own group: (limit file, usage file).
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _cgroup_room() -> int | None:
    """What a cgroup memory limit leaves (limit - usage), or None when there is no limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or v1's huge number: no limit
            return max(0, int(limit) - usage)
    return None


def format_bytes(n: float) -> str:
    """12_000_000_000 -> '12 GB' (decimal units, two or three significant figures)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            break
        n /= 1000
    if unit == "bytes":
        return f"{int(n)} bytes"
    return f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"


def too_big(nbytes: int, free: int | None = None, where: str = "") -> str | None:
    """None when `nbytes` fit in the memory free now (or nobody can say), else the phrase
    "more than the 18 GB of memory free on this machine (of 24 GB)" for a refusal.
    `free` and `where` name another memory than the host's (a GPU's)."""
    if where:
        return (
            None
            if free is None or nbytes <= free
            else (f"more than the {format_bytes(free)} free on {where}")
        )
    free = host_memory_free() if free is None else free
    if free is None or nbytes <= free:
        return None
    total = host_memory_total()
    of = f" (of {format_bytes(total)})" if total else ""
    return f"more than the {format_bytes(free)} of memory free on this machine{of}"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception says an allocation failed: CUDA's OutOfMemoryError, Python's
    and numpy's MemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    if isinstance(error, MemoryError):
        return True
    import sys

    torch = sys.modules.get("torch")  # an error from torch means torch is imported
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text
        or "DefaultCPUAllocator" in text
        or "Cannot allocate memory" in text
    )


def describe_allocation(error: BaseException) -> str:
    """The allocator's "you tried to allocate 256000000000 bytes" as "it tried to allocate
    256 GB"; other messages by their first line."""
    import re

    text = str(error).strip()
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if asked:
        return f"it tried to allocate {format_bytes(int(asked.group(1)))}"
    return (text.splitlines() or [type(error).__name__])[0] or type(error).__name__


def parameter_count(build) -> int:
    """The parameters of the model `build()` makes, counted on the meta device: no weight
    is allocated, so a model far too big for the machine is counted in milliseconds."""
    import torch

    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def out_of_memory_advice(device: str, profile, step: int | None) -> str:
    """run_failed's sentence for out of memory at optimizer step `step` (None: while
    setting up), with the usual fixes."""
    p = profile
    on_gpu_in_setup = step is None and device.startswith("cuda")
    return (
        f"out of memory on {device} "
        + (f"at step {step}" if step is not None else "while setting up")
        + f" (data.batch_size {p.data.batch_size}, train.grad_accum {p.train.grad_accum}, "
        f"precision.mode {p.precision.mode!r}); lower data.batch_size and raise "
        'train.grad_accum to keep the step the same, or use precision.mode = "bf16"'
        + ('; data.cache = "memory" keeps the dataset off the GPU' if on_gpu_in_setup else "")
    )
