"""What a performance number needs beside it: the machine, peak memory, and the hardware's peak FLOP/s."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def machine_info(device: torch.device) -> dict[str, str | int]:
    """CPU model, cores, torch threads and version, and the GPU when one is used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
    }


def _proc_status_bytes(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory so far: allocated GPU memory on CUDA, else this process's peak resident set
    (Linux VmHWM: everything torch allocated, which tracemalloc cannot see). None if unknown."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes("VmHWM")


def current_memory_bytes(device: torch.device) -> int | None:
    """Memory in use now, the baseline that ``peak_memory_bytes`` is compared against."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_bytes("VmRSS")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Measured peak of square matmuls (2 n^3 FLOPs each): the best of ``repeats`` after a warm-up.

    The yardstick for achieved FLOP/s on a CPU, where no spec-sheet peak applies."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i:  # the first one is the warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def spec_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's spec-sheet peak for ``dtype`` (Lightning's table), for MFU; None on a CPU."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)
