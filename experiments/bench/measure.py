"""The measurements of ``bytelab bench``: training steps over sequence lengths (each configuration in
its own process, ``workers.py``) and cached against uncached generation. Each number is the median
of ``reps`` timed repetitions after ``warmup`` untimed ones, with min and max beside it; achieved
FLOP/s come from the analytic counts (training = 3 x forward)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from modules.base import ByteModel, build_model
from modules.flops import decoder_flops
from modules.generate import generate

from ..perf import time_calls
from .presets import Preset, model_configs
from .workers import run_worker


@dataclass
class Setup:
    """How the models run: which, on what, in which precision."""

    models: list[str]
    batch: int  # windows per training step
    device: torch.device
    dtype: str  # float32 or bfloat16
    compile: bool  # torch.compile the model for training
    threads: int | None  # torch CPU threads (None: torch's choice)
    checkpointing: bool = False  # recompute every block's activations in the backward
    loss_chunk: int = 0  # bytes per chunk of the loss (``ByteModel.position_nats``)
    memory_limit: int | None = None  # address-space cap of each training process

    def spec(self, config: dict[str, Any], seq_len: int, warmup: int, reps: int) -> dict[str, Any]:
        """A training configuration for ``workers.train_worker``."""
        return {
            "checkpointing": self.checkpointing,
            "loss_chunk": self.loss_chunk,
            "memory_limit": self.memory_limit,
            "config": config,
            "seq_len": seq_len,
            "batch": self.batch,
            "device": str(self.device),
            "dtype": self.dtype,
            "compile": self.compile,
            "threads": self.threads,
            "warmup": warmup,
            "reps": reps,
        }


def spread(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def flops_matched_decoder(target: ByteModel, decoder: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """The decoder of the benchmark decoder's depth whose width (a multiple of 32, heads of 32)
    gives the FLOPs per byte closest to ``target``'s at ``seq_len``."""
    goal, depth = target.flops_per_byte(seq_len), decoder["init_args"]["n_layers"]
    width = min(
        range(32, 2049, 32), key=lambda d: abs(math.log(decoder_flops(seq_len, d, depth) / seq_len / goal))
    )
    args = {**decoder["init_args"], "d_model": width, "n_heads": width // 32, "max_seq_len": seq_len}
    return {"class_path": decoder["class_path"], "init_args": args}


def bench_training(setup: Setup, preset: Preset, peak: float) -> pd.DataFrame:
    """One row per model and training length: step times, bytes/s, FLOP/s and peak memory. A model
    stops at its first length that fails (out of memory) or is estimated over ``max_seconds``: the
    longer ones are marked as not run."""
    rows = []
    for name in setup.models:
        stopped = None
        for seq_len in preset.train_lens:
            if stopped is not None:
                rows.append({"model": name, "seq_len": seq_len, "batch": setup.batch, "status": stopped})
                continue
            config = model_configs(preset.size, seq_len, setup.models)[name]
            with torch.device("meta"):
                model = build_model(config)
            flops = 3 * model.forward_flops(seq_len) * setup.batch
            executed = 3 * model.forward_flops(seq_len, skip_masked=True) * setup.batch
            row = {
                "model": name,
                "seq_len": seq_len,
                "batch": setup.batch,
                "non_embedding_params": model.num_params(non_embedding=True),
                "train_flops_per_step": flops,
                "executed_flops_per_step": executed,
            }
            estimate = (preset.warmup + preset.reps) * flops / (0.5 * peak)  # at half the peak
            if estimate > preset.max_seconds:
                rows.append({**row, "status": f"skipped: ~{estimate:.0f}s > {preset.max_seconds:.0f}s"})
                stopped = f"not run: stopped at T={seq_len} (time)"
                continue
            spec = setup.spec(config, seq_len, preset.warmup, preset.reps)
            result = run_worker(spec, timeout=max(10 * estimate, 600))
            if result["status"] == "ok":
                timing = spread(result.pop("times"))
                scored = model.scored_len(seq_len) * setup.batch
                row |= timing | {
                    "bytes_per_s": scored / timing["median_s"],
                    "flops_per_s": flops / timing["median_s"],
                    "executed_flops_per_s": executed / timing["median_s"],
                    "executed_vs_peak": executed / timing["median_s"] / peak,
                }
            rows.append({**row, **result})
            if result["status"] != "ok":
                stopped = f"not run: stopped at T={seq_len} ({result['status'][:40]})"
            print(f"train {name:>12} T={seq_len:>7}  {rows[-1].get('bytes_per_s', 0):>10.0f} B/s", end="  ")
            print(rows[-1]["status"], rows[-1].get("peak_mem_bytes"), flush=True)
    return pd.DataFrame(rows)


def bench_generation(setup: Setup, preset: Preset) -> pd.DataFrame:
    """Generation speed of every model and of the decoder with MEGABYTE's training FLOPs per byte,
    at each of the preset's batch sizes (``decoder`` is the decoder of equal parameters)."""
    configs = model_configs(preset.size, preset.gen_bytes, setup.models)
    with torch.device("meta"):
        megabyte = build_model(configs["megabyte"])
    configs["decoder_flops_matched"] = flops_matched_decoder(megabyte, configs["decoder"], preset.gen_bytes)
    rows = []
    for batch in preset.gen_batches:
        for name, config in configs.items():
            if name in setup.models or name == "decoder_flops_matched":
                torch.manual_seed(0)
                model = build_model(config).to(setup.device).eval()
                rows.append({"model": name, "batch": batch, "config": json.dumps(config["init_args"])})
                rows[-1] |= generation_speed(model, preset, setup.device, batch)
                print(
                    f"generate {name:>22} B={batch:>3}  cached {rows[-1]['cached_bytes_per_s']:.0f} B/s",
                    end="  ",
                )
                print(f"uncached ~{rows[-1]['uncached_bytes_per_s']:.1f} B/s")
    return pd.DataFrame(rows)


def generation_ratios(gen: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: MEGABYTE's generated bytes/s (all rows of the batch) over the decoder of equal
    training FLOPs per byte's and over the decoder of equal parameters'."""
    rows = []
    for batch, group in gen.groupby("batch"):
        speed = dict(zip(group.model, group.cached_bytes_per_s, strict=True))
        if "megabyte" not in speed:
            continue
        rows.append(
            {
                "batch": int(batch),
                "megabyte_bytes_per_s": speed["megabyte"],
                "vs_equal_flops_decoder": speed["megabyte"]
                / speed.get("decoder_flops_matched", float("nan")),
                "vs_equal_size_decoder": speed["megabyte"] / speed.get("decoder", float("nan")),
            }
        )
    return pd.DataFrame(rows)


def generation_speed(
    model: ByteModel, preset: Preset, device: torch.device, batch: int = 1
) -> dict[str, Any]:
    """Cached generation of ``gen_bytes`` bytes in each of ``batch`` rows from an empty prompt, timed
    whole (bytes/s counts every row's bytes); uncached generation (batch 1 only, and only with
    ``uncached_points``) estimated from single full-forward steps timed at a few context lengths (a
    whole uncached run is quadratic: hours on a CPU), integrated over steps 0..n-1 (trapezoid rule)."""
    n = preset.gen_bytes
    empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
    generator = torch.Generator(device).manual_seed(0)
    cached = time_calls(lambda: generate(model, empty, n, generator=generator), device, 0, preset.reps)
    base = {
        "bytes": n,
        "training_flops_per_byte": 3 * model.flops_per_byte(n),
        "non_embedding_params": model.num_params(non_embedding=True),
        **{f"cached_{k}": v for k, v in spread(cached).items()},
        "cached_bytes_per_s": batch * n / statistics.median(cached),
    }
    if batch != 1 or not preset.uncached_points:
        return base | {"uncached_bytes_per_s": float("nan"), "speedup": float("nan")}
    points = sorted({round(f * (n - 1)) for f in preset.uncached_points})
    history = torch.randint(0, 256, (1, n - 1), device=device)
    steps = []
    with torch.inference_mode():
        for t in points:
            times = time_calls(lambda t=t: model.next_logits(history[:, :t]), device, 1, preset.reps)
            steps.append(statistics.median(times))
    pairs = range(len(points) - 1)
    uncached = steps[-1] + sum((points[i + 1] - points[i]) * (steps[i] + steps[i + 1]) / 2 for i in pairs)
    return base | {
        "uncached_s_estimated": uncached,
        "uncached_bytes_per_s": n / uncached,
        "speedup": uncached / statistics.median(cached),
        "uncached_sampled_steps": json.dumps(dict(zip(points, [round(s, 5) for s in steps], strict=True))),
    }


def reach(train: pd.DataFrame) -> pd.DataFrame:
    """Per model: the longest T whose training step ran, its time and peak memory, why the next
    length did not run, and the log-log growth of peak memory above the baseline over the run lengths
    (1.0: linear in T)."""
    rows = []
    for model, group in train.groupby("model", sort=False):
        ok = group[group.status == "ok"].sort_values("seq_len")
        after = group[group.status != "ok"].sort_values("seq_len")
        row = {"model": model, "longest_T": int(ok.seq_len.iloc[-1]) if len(ok) else 0}
        if len(ok):
            row |= {
                "step_s": float(ok.median_s.iloc[-1]),
                "peak_mem_bytes": float(ok.peak_mem_bytes.iloc[-1]),
            }
        if len(ok) >= 2:
            growth = ok.peak_mem_bytes - ok.baseline_mem_bytes
            (t0, t1), (m0, m1) = ok.seq_len.iloc[[0, -1]], growth.iloc[[0, -1]]
            row["memory_exponent"] = (
                math.log(m1 / m0) / math.log(t1 / t0) if m0 > 0 and m1 > 0 else float("nan")
            )
        row["stopped"] = (
            f"T={int(after.seq_len.iloc[0])}: {after.status.iloc[0]}" if len(after) else "ran every T"
        )
        rows.append(row)
    return pd.DataFrame(rows)
