"""``bytelab bench``: run the measurements of a preset and write its tables, plots and summary."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from ..perf import causal_attention_cost, machine_info, matmul_peak_flops, spec_peak_flops
from .measure import Setup, bench_generation, bench_training, generation_ratios, reach
from .presets import PRESETS, Preset, model_configs
from .report import plot, summary
from .targets import targets
from .workers import profile_training


def bench(
    preset: Literal["quick", "full", "smoke", "generation", "million", "million-smoke", "data"] = "quick",
    models: list[str] | None = None,
    seq_lens: list[int] | None = None,
    reps: int | None = None,
    max_seconds: float | None = None,
    batch: int = 1,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    compile: bool = False,
    threads: int | None = None,
    note: str = "",
    profile: str | None = None,
    out: str = "results/bench",
) -> int:
    """Measure training throughput, peak memory and FLOP/s over sequence lengths, and generation speed.

    Every training configuration runs in its own process, so its peak memory is its own; every
    number is the median of the preset's repetitions after a warm-up, with min and max beside it,
    and the machine beside every row. Issue 6's targets come out as a pass/fail table.

    Args:
        preset: What to measure: quick (the targets at reduced lengths), full (T = 1K..64K), smoke
            (tests), generation (generation at batch sizes 1, 8, 64), million (one training step at
            T = 8K..1M with checkpointing and a chunked loss), million-smoke (its test), data (cache
            building from raw text, .jsonl.zst, Parquet and JPEG shards at 1 and 2 workers beside
            cat / zstd -dc of the same files; ``experiments/bench/data.py``).
        models: The architectures to train (default: the three the targets compare); any other of
            ``modules/sizes.py`` that has the preset's size (``bench``, or ``bench-tiny``) works too.
        seq_lens: Training lengths replacing the preset's.
        reps: Timed repetitions replacing the preset's.
        max_seconds: Skip a training configuration estimated (at half the measured matmul peak) to
            take longer than this, replacing the preset's cap.
        batch: Windows per training step.
        device: Torch device (default: cuda if there is one, else cpu).
        dtype: Default: bfloat16 on a GPU, else float32.
        compile: torch.compile the model for training.
        threads: Torch CPU threads (default: torch's choice).
        note: A line for summary.md, e.g. how idle the machine was.
        profile: Only profile one training step of this architecture at the target T.
        out: Output folder (a subfolder per preset).
    """
    if preset == "data":
        from .data import bench_data

        return bench_data(Path(out) / "data", reps or 5, note)
    chosen = Preset(
        **{
            **asdict(PRESETS[preset]),
            **({"train_lens": seq_lens} if seq_lens else {}),
            **({"reps": reps} if reps else {}),
            **({"max_seconds": max_seconds} if max_seconds else {}),
        }
    )
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = dtype or ("bfloat16" if where.type == "cuda" else "float32")
    setup = Setup(
        list(models or ("megabyte", "decoder", "perceiver_ar")),
        batch,
        where,
        precision,
        compile,
        threads,
        chosen.checkpointing,
        chosen.loss_chunk,
        chosen.memory_limit if where.type == "cpu" else None,
    )
    if threads:
        torch.set_num_threads(threads)
    machine = machine_info(where)
    folder = Path(out) / preset
    folder.mkdir(parents=True, exist_ok=True)
    if profile:
        config = model_configs(chosen.size, chosen.target_len, [profile])[profile]
        spec = setup.spec(config, chosen.target_len, warmup=1, reps=1)
        print(profile_training(spec, folder / f"profile_{profile}.txt"))
        return 0
    torch_dtype = getattr(torch, precision)
    peak = matmul_peak_flops(where, torch_dtype, sizes=chosen.peak_sizes)
    print(f"{machine}  matmul peak {peak / 1e9:.1f} GFLOP/s ({precision})", end="  ")
    causal_cost = float("nan")  # only the targets need it (a full attention at T = 1M would take hours)
    if chosen.train_lens and chosen.gen_bytes:
        causal_cost = causal_attention_cost(where, torch_dtype, chosen.target_len)
        print(f"causal / full attention time at T={chosen.target_len}: {causal_cost:.2f}", end="")
    print(flush=True)
    train = bench_training(setup, chosen, peak) if chosen.train_lens else pd.DataFrame()
    if len(train):
        train.assign(**machine, matmul_peak_flops=peak).to_csv(
            folder / "training.csv", index=False
        )  # kept if later parts stop
    gen = bench_generation(setup, chosen) if chosen.gen_bytes else pd.DataFrame()
    checks = pd.DataFrame()
    if len(train) and len(gen):
        checks = targets(train, gen, chosen, peak, spec_peak_flops(where, torch_dtype))
    tables = {"training": train, "generation": gen, "targets": checks}
    if len(gen) and len(chosen.gen_batches) > 1:
        tables["generation_by_batch"] = generation_ratios(gen)
    if len(train) and not len(gen):
        tables["reach"] = reach(train)
    for name, table in tables.items():
        if len(table):
            table.assign(**machine, matmul_peak_flops=peak).to_csv(folder / f"{name}.csv", index=False)
    plot(train, gen, folder)
    machine_line = ", ".join(f"{k} {v}" for k, v in machine.items())
    setting = (
        f"Machine: {machine_line}. Device {where}, {precision}, compile={compile}. "
        f"Measured {precision} matmul peak: {peak / 1e9:.1f} GFLOP/s. {note}".strip()
    )
    text = summary(preset, setting, (chosen.target_len, causal_cost), tables)
    (folder / "summary.md").write_text(text)
    print(text)
    return 0
