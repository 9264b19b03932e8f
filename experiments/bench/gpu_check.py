"""One short GPU check of what the CPU cannot show: flash attention in bf16 training, ``torch.compile``
with inductor, MEGABYTE from 8K to a million bytes (and beyond if it fits) and how far the flat
baselines go in the same memory, with MFU against the card's measured bf16 matmul peak.

    python3 -m experiments.bench.gpu_check --out results/bench/gpu      # ~5 minutes on an H200
    python3 -m experiments.bench.gpu_check --smoke --out /tmp/check     # CPU, tiny models (the test)

It imports only ``modules/``, ``experiments.perf`` and torch (no jsonargparse), prints every line as
it goes and writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``. Each training step is one
window: forward, loss, backward, AdamW; long windows run with checkpointed blocks and the loss (and
MEGABYTE's local model) 16K bytes at a time (``ByteModel.position_nats``). MFU counts model FLOPs
(3x the forward, attention's causal half only: ``forward_flops(T, skip_masked=True)``), not the
recomputation that checkpointing adds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from modules.base import ByteModel, build_model
from modules.parallel import parallelize_blocks

from ..perf import machine_info, matmul_peak_flops, peak_memory_bytes, synchronize

# A GPU-sized MEGABYTE for long windows, and flat baselines of the same width (equal global model).
GPU_SIZES = {
    "megabyte": {
        "patch_size": 8,
        "global_d_model": 1024,
        "global_layers": 8,
        "local_d_model": 512,
        "local_layers": 4,
        "n_heads": 16,
        "local_n_heads": 8,
    },
    "decoder": {"d_model": 1024, "n_layers": 8, "n_heads": 16},
    "perceiver_ar": {"d_model": 1024, "n_layers": 8, "n_heads": 16, "num_latents": 1024},
}
SMOKE_SIZES = {
    "megabyte": {"patch_size": 4, "global_d_model": 64, "global_layers": 1, "local_d_model": 32,
                 "local_layers": 1, "n_heads": 2},
    "decoder": {"d_model": 32, "n_layers": 1, "n_heads": 2},
    "perceiver_ar": {"d_model": 32, "n_layers": 1, "n_heads": 2, "num_latents": 16},
}  # fmt: skip
CLASS = {"megabyte": "modules.Megabyte", "decoder": "modules.Decoder", "perceiver_ar": "modules.PerceiverAR"}


def build(name: str, init_args: dict[str, Any], seq_len: int, device: torch.device) -> ByteModel:
    torch.manual_seed(0)
    config = {"class_path": CLASS[name], "init_args": {**init_args, "max_seq_len": seq_len}}
    with device:  # initialised where it runs: a 4M-position table takes seconds on a CPU
        return build_model(config).train()


def step_fn(
    model: ByteModel, seq_len: int, device: torch.device, bf16: bool, chunk: int, compiled: Any = None
):
    """One training step on one random window: forward, loss, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, 256, (1, seq_len), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if compiled is not None:
                logits = compiled(x)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
            else:
                loss = model.position_nats(x, chunk).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Any, device: torch.device, reps: int) -> tuple[float, float]:
    """Seconds of the first call (warm-up, compilation) and the median of ``reps`` after it."""
    times = []
    for _ in range(reps + 1):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    later = sorted(times[1:])
    return times[0], later[len(later) // 2]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check(smoke: bool, out: Path, budget_s: float = 330.0) -> dict[str, Any]:
    """Every part in order; each model's long-window runs stop when its share of what is left of
    ``budget_s`` seconds is spent (a share it leaves goes to the models after it)."""
    start = time.perf_counter()
    device = torch.device("cpu" if smoke else "cuda")
    bf16 = not smoke
    dtype = torch.bfloat16 if bf16 else torch.float32
    sizes = SMOKE_SIZES if smoke else GPU_SIZES
    result: dict[str, Any] = {"machine": machine_info(device), "smoke": smoke}
    peak = matmul_peak_flops(device, dtype, sizes=(256,) if smoke else (4096, 8192))
    result["matmul_peak_flops"] = peak
    print(f"{result['machine']}  measured {dtype} matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)

    # 1. bf16-mixed steps of the three models with SDPA restricted to the flash kernel.
    t, reps = (128, 1) if smoke else (8192, 3)
    result["flash"] = {}
    for name in CLASS:
        model = build(name, sizes[name], t, device)
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                first, median = timed(step_fn(model, t, device, bf16, 0), device, reps)
            flops = 3 * model.forward_flops(t, skip_masked=True)
            row = {"T": t, "step_s": median, "mfu": flops / median / peak, "status": "ok (flash only)"}
        except RuntimeError as error:  # no flash kernel for some attention call of this model
            row = {"T": t, "status": f"flash refused: {str(error).splitlines()[0][:160]}"}
        result["flash"][name] = row
        print(f"flash  {name:>12} T={t}: {row}", flush=True)
        del model

    # 2. torch.compile of one training step (the whole model; inductor on the GPU).
    model = build("megabyte", sizes["megabyte"], t, device)
    _, eager = timed(step_fn(model, t, device, bf16, 0), device, reps)
    compiled = torch.compile(model, backend="eager" if smoke else "inductor")  # smoke: graph capture only
    compile_s, compiled_s = timed(step_fn(model, t, device, bf16, 0, compiled), device, reps)
    result["compile"] = {
        "T": t,
        "first_step_s": compile_s,
        "eager_step_s": eager,
        "compiled_step_s": compiled_s,
    }
    print(f"compile megabyte T={t}: {result['compile']}", flush=True)
    del model, compiled

    # 3. One step from 8K bytes up, as long as it fits and a step stays under the time cap.
    lengths = [64, 128, 256] if smoke else [2**k for k in range(13, 23)]  # 8K .. 4M
    cap_s = 10.0 if smoke else 40.0
    chunk = 32 if smoke else 16384
    result["long"] = {}
    for i, name in enumerate(CLASS):
        rows, previous = [], None
        left = budget_s - (time.perf_counter() - start)  # shared by the models still to run
        deadline = time.perf_counter() + left / (len(CLASS) - i)
        for t in lengths:
            if previous and previous["step_s"] * (t / previous["T"]) ** 2 > cap_s:
                rows.append({"T": t, "status": f"not run: a step estimated over {cap_s:.0f} s"})
                break
            if time.perf_counter() > deadline:
                rows.append({"T": t, "status": f"not run: this model's share of {budget_s:.0f} s was spent"})
                break
            reset_peak(device)
            try:
                model = build(name, sizes[name], t, device)
                parallelize_blocks(model, activation_checkpointing=True, compile=False)
                _, median = timed(step_fn(model, t, device, bf16, chunk), device, 1)
                flops = 3 * model.forward_flops(t, skip_masked=True)
                row = {"T": t, "step_s": median, "peak_mem_bytes": peak_memory_bytes(device)}
                row |= {"mfu": flops / median / peak, "status": "ok"}
            except torch.OutOfMemoryError:
                row = {"T": t, "status": "out of memory"}
            model = None
            rows.append(row)
            print(f"long   {name:>12} T={t:>8}: {row}", flush=True)
            if row["status"] != "ok":
                break
            previous = row
        result["long"][name] = rows
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# GPU check ({'smoke, CPU' if result['smoke'] else 'bf16-mixed'})",
        "",
        f"{result['machine']}",
        "",
    ]
    lines += [f"Measured matmul peak: {result['matmul_peak_flops'] / 1e12:.2f} TFLOP/s", ""]
    lines += [
        "| part | model | T | step s | peak memory GiB | MFU | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in ("flash", "long"):
        for name, rows in result[part].items():
            for row in rows if isinstance(rows, list) else [rows]:
                mem = f"{row['peak_mem_bytes'] / 2**30:.2f}" if row.get("peak_mem_bytes") else ""
                step = f"{row['step_s']:.3f}" if "step_s" in row else ""
                mfu = f"{row['mfu']:.3f}" if "mfu" in row else ""
                lines.append(f"| {part} | {name} | {row['T']} | {step} | {mem} | {mfu} | {row['status']} |")
    c = result["compile"]
    lines += ["", f"torch.compile (MEGABYTE, T={c['T']}): first step {c['first_step_s']:.1f} s, "
              f"eager {c['eager_step_s']:.4f} s, compiled {c['compiled_step_s']:.4f} s per step"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/gpu", help="folder for gpu_check.json and .md")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (the test)")
    parser.add_argument("--budget_s", type=float, default=330.0, help="stop long-window runs after this")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = check(args.smoke, out, args.budget_s)
    print(f"gpu_check: {time.perf_counter() - start:.0f} s; wrote {out / 'gpu_check.json'} and gpu_check.md")
    return result


if __name__ == "__main__":
    main()
