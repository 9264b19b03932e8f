"""One training configuration of ``bytelab bench`` in its own process, so that its peak memory (the
process's peak resident set on a CPU, ``max_memory_allocated`` on a GPU) is its own.

``python -m experiments.bench.workers SPEC`` runs ``train_worker`` on a JSON spec (``config``,
``seq_len``, ``batch``, ``device``, ``dtype``, ``compile``, ``threads``, ``warmup``, ``reps``, and
optionally ``checkpointing``, ``loss_chunk`` and ``memory_limit``) and prints its result as one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modules.base import build_model
from modules.parallel import parallelize_blocks

from ..perf import current_memory_bytes, peak_memory_bytes, synchronize, time_calls


def make_train_step(spec: dict[str, Any]) -> tuple[Callable[[], None], torch.device]:
    """The model, optimiser and one window of random bytes of a training configuration, as a
    function that runs one step: forward, backward and an AdamW update. With ``checkpointing`` every
    transformer block recomputes its activations in the backward; with ``loss_chunk`` the loss (and
    MEGABYTE's local model) runs that many bytes at a time (``ByteModel.position_nats``)."""
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(spec["config"]).to(device).train()
    parallelize_blocks(model, spec.get("checkpointing", False), compile=False)
    step_model = torch.compile(model) if spec["compile"] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (spec["batch"], spec["seq_len"]), device=device)
    chunk = spec.get("loss_chunk", 0)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if chunk:
                loss = model.position_nats(x, chunk).mean()
            else:
                logits = step_model(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, -logits.size(1) :].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step, device


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training configuration, in its own process: step times and peak memory. With a
    ``memory_limit`` (bytes) the process's address space is capped there, so a configuration that
    needs more fails with a MemoryError instead of pushing the machine into swap or the OOM killer."""
    if spec.get("memory_limit"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["memory_limit"], spec["memory_limit"]))
    train_step, device = make_train_step(spec)
    synchronize(device)
    baseline = current_memory_bytes(device)
    times = time_calls(train_step, device, spec["warmup"], spec["reps"])
    return {"times": times, "peak_mem_bytes": peak_memory_bytes(device), "baseline_mem_bytes": baseline}


def profile_training(spec: dict[str, Any], out: Path) -> str:
    """Top operators of one training step (after a warm-up step) under torch.profiler, by self time."""
    from torch.profiler import ProfilerActivity, profile

    train_step, device = make_train_step(spec)
    train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=key, row_limit=25)
    out.write_text(text)
    return text


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``train_worker`` in a fresh process; failures (out of memory, timeout) become a status."""
    command = [sys.executable, "-m", "experiments.bench.workers", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f}s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "MemoryError" in last or "DefaultCPUAllocator: can't allocate" in last or "out of memory" in last:
            return {"status": "out of memory"}
        return {"status": f"failed: {last[:200]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


if __name__ == "__main__":
    print(json.dumps(train_worker(json.loads(sys.argv[1]))))
