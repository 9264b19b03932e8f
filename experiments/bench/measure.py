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

    def spec(self, config: dict[str, Any], seq_len: int, warmup: int, reps: int) -> dict[str, Any]:
        """A training configuration for ``workers.train_worker``."""
        return {
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
    """One row per model and training length: step times, bytes/s, FLOP/s and peak memory."""
    rows = []
    for name in setup.models:
        for seq_len in preset.train_lens:
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
            print(f"train {name:>12} T={seq_len:>7}  {rows[-1].get('bytes_per_s', 0):>10.0f} B/s", end="  ")
            print(rows[-1]["status"])
    return pd.DataFrame(rows)


def bench_generation(setup: Setup, preset: Preset) -> pd.DataFrame:
    """Generation speed of every model and of the decoder with MEGABYTE's training FLOPs per byte."""
    configs = model_configs(preset.size, preset.gen_bytes, setup.models)
    with torch.device("meta"):
        megabyte = build_model(configs["megabyte"])
    configs["decoder_flops_matched"] = flops_matched_decoder(megabyte, configs["decoder"], preset.gen_bytes)
    rows = []
    for name, config in configs.items():
        if name in setup.models or name == "decoder_flops_matched":
            torch.manual_seed(0)
            model = build_model(config).to(setup.device).eval()
            rows.append({"model": name, "config": json.dumps(config["init_args"])})
            rows[-1] |= generation_speed(model, preset, setup.device)
            print(f"generate {name:>22}  cached {rows[-1]['cached_bytes_per_s']:.0f} B/s", end="  ")
            print(f"uncached ~{rows[-1]['uncached_bytes_per_s']:.1f} B/s")
    return pd.DataFrame(rows)


def generation_speed(model: ByteModel, preset: Preset, device: torch.device) -> dict[str, Any]:
    """Cached generation of ``gen_bytes`` bytes from an empty prompt, timed whole; uncached
    generation estimated from single full-forward steps timed at a few context lengths (a whole
    uncached run is quadratic: hours on a CPU), integrated over steps 0..n-1 (trapezoid rule)."""
    n = preset.gen_bytes
    empty = torch.zeros(1, 0, dtype=torch.long, device=device)
    generator = torch.Generator(device).manual_seed(0)
    cached = time_calls(lambda: generate(model, empty, n, generator=generator), device, 0, preset.reps)
    points = sorted({round(f * (n - 1)) for f in preset.uncached_points})
    history = torch.randint(0, 256, (1, n - 1), device=device)
    steps = []
    with torch.inference_mode():
        for t in points:
            times = time_calls(lambda t=t: model.next_logits(history[:, :t]), device, 1, preset.reps)
            steps.append(statistics.median(times))
    pairs = range(len(points) - 1)
    uncached = steps[-1] + sum((points[i + 1] - points[i]) * (steps[i] + steps[i + 1]) / 2 for i in pairs)
    return {
        "bytes": n,
        "training_flops_per_byte": 3 * model.flops_per_byte(n),
        "non_embedding_params": model.num_params(non_embedding=True),
        **{f"cached_{k}": v for k, v in spread(cached).items()},
        "cached_bytes_per_s": n / statistics.median(cached),
        "uncached_s_estimated": uncached,
        "uncached_bytes_per_s": n / uncached,
        "speedup": uncached / statistics.median(cached),
        "uncached_sampled_steps": json.dumps(dict(zip(points, [round(s, 5) for s in steps], strict=True))),
    }
