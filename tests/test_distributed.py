"""Scale-out on the CPU: FSDP2 (ModelParallelStrategy) and DDP with 2 processes over gloo, through
the real ``bytelab`` entry point. Select with ``pytest -m distributed``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
import yaml

from datamodules import TextBytes
from modules import ByteLM
from modules.base import ByteModel, build_model
from modules.checkpoint import load_checkpoint

from .test_cli import CONFIGS, bytelab

pytestmark = [pytest.mark.distributed, pytest.mark.cli]

TRAINERS = CONFIGS.parent / "trainer"
TWO_CPUS = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"]
SMALL = [
    "--trainer.enable_progress_bar=false",
    "--data.init_args.seq_len=64",
    "--data.init_args.score_len=32",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven documents; with these window sizes the validation batches split unevenly over 2 ranks."""
    root = tmp_path_factory.mktemp("corpus")
    line = b"all the world's a stage, and all the men and women merely players;\n"
    for i in range(7):
        (root / f"doc{i}.txt").write_bytes(line * (9 + 4 * i))
    return root


def val_bpb(run: Path) -> list[float]:
    return pd.read_csv(run / "metrics.csv")["val/bpb"].dropna().tolist()


def validate_in_process(checkpoint: Path, corpus: Path, cache: Path) -> float:
    """One process, no strategy: the reference number for the distributed evaluations."""
    lm = ByteLM.from_checkpoint(checkpoint)
    dm = TextBytes(
        str(corpus), seq_len=64, score_len=32, batch_size=4, eval_batch_size=2, cache_dir=str(cache)
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    return trainer.validate(lm, datamodule=dm, verbose=False)[0]["val/bpb"]


def test_uneven_validation_batches(corpus, tmp_path):
    dm = TextBytes(str(corpus), seq_len=64, score_len=32, eval_batch_size=2, cache_dir=str(tmp_path))
    dm.setup()
    ranks = [len(dm.dataloader("val", rank=r, world_size=2)) for r in range(2)]
    single = len(dm.dataloader("val", rank=0, world_size=1))
    assert single % 2 == 1 and ranks == [single // 2 + 1] * 2  # rank 1 runs one padding batch


def test_ddp_evaluation_equals_one_process(corpus, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = [f"--config={CONFIGS / 'decoder_tiny.yaml'}", *SMALL, f"--data.init_args.paths={corpus}"]
    trained = bytelab("fit", *common, f"--run_dir={run}", "--trainer.max_steps=3", cache=cache)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = run / "checkpoints" / "last.ckpt"
    ddp = bytelab(
        "validate", f"--config={TRAINERS / 'ddp.yaml'}", *common, *TWO_CPUS, f"--ckpt_path={checkpoint}",
        f"--run_dir={tmp_path / 'ddp'}", cache=cache,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert val_bpb(tmp_path / "ddp")[-1] == pytest.approx(
        validate_in_process(checkpoint, corpus, cache), abs=1e-6
    )


# Exactness of distributed training. Each configuration of SPLITS trains MEGABYTE for STEPS optimizer
# steps of WINDOWS windows, split differently over processes and micro-batches. TrainSampler gives
# optimizer step k the samples 8k ... 8k + 7 of one stream in every one of them (checked first, by
# test_every_split_trains_each_step_on_the_same_windows), so all must reach one process's weights.
STEPS = 6
WINDOWS = 8
SEQ_LEN = 64
EXACT = [
    f"--config={CONFIGS / 'megabyte_tiny.yaml'}",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--model.warmup_steps=2",  # then a cosine decay over the run: the schedule's length matters
    f"--data.init_args.seq_len={SEQ_LEN}",
    "--data.init_args.score_len=32",
    "--data.init_args.eval_batch_size=2",  # uneven validation batches over 2 ranks
]
# name: (trainer config, processes, windows per batch, micro-batches per optimizer step, budget)
SPLITS: dict[str, tuple[str | None, int, int, int, str | None]] = {
    "one": (None, 1, 8, 1, None),
    "accumulate": (None, 1, 4, 2, "flops"),
    "ddp": ("ddp", 2, 4, 1, "flops"),
    "fsdp": ("fsdp", 2, 2, 2, "bytes"),
    "fsdp_compile": ("fsdp", 2, 2, 2, "bytes"),  # --model.compile=true (COMPILED below)
}
# The compiled FSDP run's blocks go through torch.compile with the aot_eager backend: TorchDynamo
# traces each block under FSDP2's hooks and AOTAutograd builds its forward/backward graphs, as on a
# GPU; only inductor's code generation (a C++ build per graph on a CPU) is left out.
COMPILED = {"fsdp_compile": ["--model.compile=true"]}
COMPILED_ENV = {"BYTELAB_COMPILE_BACKEND": "aot_eager"}
# Largest weight difference from "one" measured after 6 steps (float32 on a 2-core CPU): accumulate
# 2.8e-6, ddp 3.7e-6, fsdp 3.5e-6, where weights are ~5e-2 and AdamW moves each by up to lr = 2e-3
# a step. Summing a gradient in another order changes it by ~1e-7 relative, but AdamW divides by
# sqrt(exp_avg_sq), so in weights whose gradient nearly cancels the difference grows to ~1e-3 of a
# step. The tolerance is 5x the worst measured, 1% of one step; the mutations the tests must catch
# (a schedule counted in micro-batches or over ranks, FSDP ranks that never reduce their gradients)
# move some weight by 2e-3 or more, 100x the tolerance.
WEIGHT_ATOL = 2e-5


def megabyte_tiny() -> ByteModel:
    """The model of megabyte_tiny.yaml, built here to price a training step."""
    config = yaml.safe_load((CONFIGS / "megabyte_tiny.yaml").read_text())
    return build_model(config["model"]["model"])


def split_args(name: str) -> list[str]:
    """Command-line options of a configuration of SPLITS. A budget is STEPS + 1/2 steps of WINDOWS
    windows, so a budget that miscounts processes or micro-batches by 2x stops at another step."""
    trainer, processes, batch, accumulate, budget = SPLITS[name]
    assert processes * batch * accumulate == WINDOWS
    # fsdp reaches its 2 micro-batches through global_batch (accumulation from the world size).
    steps = f"--trainer.accumulate_grad_batches={accumulate}"
    if name == "fsdp":
        steps = f"--global_batch={WINDOWS}"
    args = [*EXACT, f"--data.init_args.batch_size={batch}", steps]
    if trainer is not None:
        args = [f"--config={TRAINERS / f'{trainer}.yaml'}", *args, *TWO_CPUS]
    args += COMPILED.get(name, [])
    model = megabyte_tiny()
    if budget == "flops":
        args.append(f"--budget.flops={(STEPS + 0.5) * WINDOWS * 3 * model.forward_flops(SEQ_LEN)}")
    elif budget == "bytes":
        args.append(f"--budget.bytes={(STEPS + 0.5) * WINDOWS * model.scored_len(SEQ_LEN)}")
    else:
        args.append(f"--trainer.max_steps={STEPS}")
    return args


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the runs of the exactness tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(corpus: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run directory of a configuration of SPLITS, trained once per module when first asked for."""
    runs: dict[str, Path] = {}

    def run_dir(name: str) -> Path:
        if name not in runs:
            run = tmp_path_factory.mktemp(name)
            result = bytelab(
                "fit",
                *split_args(name),
                f"--data.init_args.paths={corpus}",
                f"--run_dir={run}",
                cache=cache,
                env=COMPILED_ENV if name in COMPILED else None,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            runs[name] = run
        return runs[name]

    return run_dir


def last(run: Path) -> dict[str, Any]:
    """A run's last checkpoint, consolidated when sharded."""
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


def step_samples(dm: TextBytes, processes: int, batch: int, accumulate: int, steps: int) -> list[list[int]]:
    """The sample numbers of each optimizer step, over all processes and micro-batches, as the
    processes' training dataloaders batch them (over two epochs: the stream goes on across them)."""
    dm.batch_size = batch
    per_step: list[list[int]] = [[] for _ in range(steps)]
    for rank in range(processes):
        loader = dm.dataloader("train", rank=rank, world_size=processes)
        batches: list[list[int]] = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            batches += list(loader.batch_sampler)
        for step in range(steps):
            for micro_batch in batches[step * accumulate : (step + 1) * accumulate]:
                per_step[step] += micro_batch
    return per_step


def test_every_split_trains_each_step_on_the_same_windows(corpus: Path, tmp_path: Path) -> None:
    """The premise of the exactness tests: in every configuration of SPLITS, optimizer step k trains
    on samples 8k ... 8k + 7 of the one stream, each exactly once over all processes and
    micro-batches, across an epoch boundary too; so every step's mean gradient is one process's."""
    dm = TextBytes(str(corpus), seq_len=SEQ_LEN, cache_dir=str(tmp_path), train_samples_per_epoch=16)
    dm.setup()
    expected = [list(range(WINDOWS * k, WINDOWS * (k + 1))) for k in range(4)]
    for name, (_, processes, batch, accumulate, _) in SPLITS.items():
        steps = step_samples(dm, processes, batch, accumulate, steps=4)
        assert [sorted(samples) for samples in steps] == expected, name


@pytest.mark.parametrize("name", ["accumulate", "ddp", "fsdp", "fsdp_compile"])
def test_split_training_equals_one_process(name: str, trained: Callable[[str], Path]) -> None:
    """1 process x 4 windows x 2 micro-batches, DDP 2 x 4 and FSDP 2 x 2 x 2 reach the weights of one
    process training on batches of 8, after 6 steps of AdamW with gradient clipping and a decaying
    learning rate in float32, to within float reduction order (WEIGHT_ATOL); so does FSDP with
    ``--model.compile=true`` (its blocks traced and compiled, COMPILED)."""
    reference, split = last(trained("one")), last(trained(name))
    assert split["global_step"] == reference["global_step"] == STEPS
    assert split["state_dict"].keys() == reference["state_dict"].keys()
    difference = {
        key: (split["state_dict"][key] - weight).abs().max().item()
        for key, weight in reference["state_dict"].items()
    }
    worst = max(difference, key=difference.__getitem__)
    assert difference[worst] <= WEIGHT_ATOL, f"{worst} differs by {difference[worst]:.2e}"


@pytest.mark.parametrize("name", ["accumulate", "ddp", "fsdp"])
def test_budget_counts_every_process_and_micro_batch(
    name: str, trained: Callable[[str], Path], corpus: Path, tmp_path: Path
) -> None:
    """ComputeBudget with 2 processes and/or 2 micro-batches per optimizer step (FLOP budgets for
    accumulate and ddp, a byte budget for fsdp, 2 x 2 x 2): a budget of 6.5 steps of 8 windows
    stops the run after 6, and the FLOPs and bytes it counts are those of the 48 windows of 64 bytes
    trained on, every rank and micro-batch included (the windows' own bytes: those that end less than
    64 bytes into a document are shorter)."""
    checkpoint = last(trained(name))
    assert checkpoint["global_step"] == STEPS
    data = TextBytes(str(corpus), seq_len=SEQ_LEN, cache_dir=str(tmp_path))
    data.setup()
    windows = data.train_dataset()
    assert checkpoint["bytelab"]["bytes_seen"] == sum(len(windows[i]) for i in range(STEPS * WINDOWS))
    assert checkpoint["bytelab"]["flops_seen"] == STEPS * WINDOWS * 3 * megabyte_tiny().forward_flops(SEQ_LEN)


def test_fsdp_resume_restores_weights_and_optimizer_state(
    corpus: Path, cache: Path, trained: Callable[[str], Path], tmp_path: Path
) -> None:
    """FSDP 2 x 2 x 2 killed by SIGKILL (both ranks) after step 5 and resumed with --ckpt_path last
    from the sharded checkpoint of step 4 ends bit for bit where the uninterrupted run ends: weights,
    AdamW state (exp_avg, exp_avg_sq and step of every parameter), learning-rate schedule, counters."""
    common = [*split_args("fsdp"), f"--data.init_args.paths={corpus}", f"--run_dir={tmp_path}"]
    common.append("--save_every_n_steps=2")
    kill = '{"class_path": "tests.faults.KillAtStep", "init_args": {"step": 5}}'
    killed = bytelab("fit", *common, f"--trainer.callbacks+={kill}", cache=cache)
    assert killed.returncode == -9
    assert last(tmp_path)["global_step"] == 4
    resumed = bytelab("fit", *common, "--ckpt_path=last", cache=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, uninterrupted = last(tmp_path), last(trained("fsdp"))
    assert final["global_step"] == uninterrupted["global_step"] == STEPS
    assert final["bytelab"]["bytes_seen"] == uninterrupted["bytelab"]["bytes_seen"]
    assert final["bytelab"]["flops_seen"] == uninterrupted["bytelab"]["flops_seen"]
    assert final["lr_schedulers"] == uninterrupted["lr_schedulers"]
    assert final["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name
    optimizer, expected = final["optimizer_0"], uninterrupted["optimizer_0"]
    assert optimizer["param_groups"] == expected["param_groups"]
    assert optimizer["state"].keys() == expected["state"].keys() == uninterrupted["state_dict"].keys()
    for name, state in expected["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer["state"][name][key], state[key]), (name, key)


def test_fsdp_sharded_checkpoint_evaluates_like_one_process(
    corpus: Path, cache: Path, trained: Callable[[str], Path], tmp_path: Path
) -> None:
    """An FSDP run (2 ranks) writes its last checkpoint as one shard per rank; the validation it ran
    at its end, and `bytelab validate` of those shards on 2 ranks, each give the bits per byte that
    one process computes from the consolidated checkpoint (uneven validation batches included)."""
    run = trained("fsdp")
    shards = run / "checkpoints" / "last.ckpt"
    assert shards.is_dir() and {p.name for p in shards.iterdir()} >= {
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    }
    assert torch.load(shards / "meta.pt", weights_only=True)["global_step"] == STEPS
    reference = validate_in_process(shards, corpus, cache)
    assert val_bpb(run)[-1] == pytest.approx(reference, abs=1e-6)  # the run's validation at its end
    evaluation = bytelab(
        "validate", *split_args("fsdp"), f"--data.init_args.paths={corpus}", f"--ckpt_path={shards}",
        f"--run_dir={tmp_path}", cache=cache,
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert val_bpb(tmp_path)[-1] == pytest.approx(reference, abs=1e-6)
