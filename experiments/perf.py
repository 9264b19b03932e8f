"""What a performance number needs beside it: the machine, peak memory, and the hardware's peak FLOP/s."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


def choose_parallelism(cores: int, runs: int, params: int, gpus: int = 0) -> tuple[int, int]:
    """How a sweep uses a machine: (runs at a time, torch threads per run), from its cores, the runs
    to do and the largest model's parameters. A run gets the threads its model uses well (matmuls of
    a small model are too small to split: 1 thread up to 20M parameters, 2 up to 100M, 4 up to 500M,
    then 8) and as many runs as fit side by side; cores left over when there are few runs go to
    their threads (up to 4x what the model wants). With GPUs, one run per GPU, the cores shared."""
    cores, runs = max(cores, 1), max(runs, 1)
    if gpus:
        jobs = min(runs, gpus)
        return jobs, max(cores // jobs, 1)
    wanted = min(
        next(t for limit, t in ((20e6, 1), (100e6, 2), (500e6, 4), (math.inf, 8)) if params < limit), cores
    )
    jobs = max(min(runs, cores // wanted), 1)
    return jobs, max(wanted, min(cores // jobs, 4 * wanted))


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


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5
) -> float:
    """Measured peak of square matmuls (2 n^3 FLOPs each): the best of ``repeats`` after a warm-up,
    over several sizes (one size can fall between the kernel's blockings and under-read the peak).

    The yardstick for achieved FLOP/s on a CPU, where no spec-sheet peak applies."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(2, size, size, device=device, dtype=dtype)
        for seconds in time_calls(lambda a=a, b=b: a @ b, device, 1, repeats):
            best = max(best, 2 * size**3 / seconds)
    return best


def causal_attention_cost(
    device: torch.device, dtype: torch.dtype, seq_len: int, d_model: int = 512, n_heads: int = 8
) -> float:
    """Time of causal over full (unmasked) SDPA, forward and backward, on one window: ~0.5 where
    the kernel skips the masked half, as the executed-FLOP count (``skip_masked``) assumes."""
    shape = (1, n_heads, seq_len, d_model // n_heads)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def attention(causal: bool) -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    causal, full = (min(time_calls(lambda c=c: attention(c), device, 1, 3)) for c in (True, False))
    return causal / full


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def spec_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's spec-sheet peak for ``dtype`` (Lightning's table), for MFU; None on a CPU."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)
