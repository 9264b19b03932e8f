"""The real ``bytelab`` entry point, run as a user runs it, on tiny CPU settings."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from datamodules import TextBytes
from experiments.cli import COMMANDS, SUBCOMMANDS, command, main
from modules import ByteLM, Decoder
from modules.base import build_model

pytestmark = pytest.mark.cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs" / "model"
SCRIPT = Path(sys.executable).with_name("bytelab")
ENTRY = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "experiments.cli"]
TINY = [  # a few steps on 96-byte windows, whatever the config's own sizes
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=3",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.seq_len=96",
    "--data.init_args.score_len=32",
    "--data.init_args.batch_size=4",
]


# Starts a command with SIGINT at its default: a shell's background job (a CI runner's, `cmd &`)
# starts its children with SIGINT ignored, and a Python started so never turns Ctrl-C into
# KeyboardInterrupt, which a test that sends one needs.
SIGINT_DEFAULT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def bytelab(
    *args: str, cache: Path, env: dict[str, str] | None = None, sigint: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the console script; ``sigint``: with Ctrl-C handled even where this process ignores it."""
    # PYTHONPATH lets a run load test-only callbacks (tests/faults.py) by class path.
    env = {**os.environ, "BYTELAB_CACHE": str(cache), "PYTHONPATH": str(REPO), **(env or {})}
    entry = [*SIGINT_DEFAULT, *ENTRY] if sigint else ENTRY
    return subprocess.run([*entry, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def noise(output: str) -> list[str]:
    """The lines of a run's output that are library warnings (``file.py:N: ...``) or tips."""
    return [line for line in output.splitlines() if re.search(r"\.py:\d+: ", line) or "Tip:" in line]


def fit_modality_default(data_config: str, model_config: str, tmp_path: Path) -> None:
    """Two steps of ``bytelab fit`` (in process) of a model config on a modality's default data:
    one validation with finite bits per byte below uniform, and a checkpoint."""
    code = main(
        [
            "fit",
            f"--config={CONFIGS.parent / 'data' / f'{data_config}.yaml'}",
            f"--config={CONFIGS / f'{model_config}.yaml'}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.seq_len=96",
            "--data.init_args.score_len=96",
            "--data.init_args.batch_size=2",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            f"--run_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 0
    val = pd.read_csv(tmp_path / "run" / "metrics.csv")["val/bpb"].dropna()
    # Two steps learn next to nothing: a correct model still scores about log2(256) = 8 bits (measured
    # 7.98-8.16 on images and audio with torch 2.11, 7.84 for the decoder on images with torch 2.15 and
    # Pillow 13); bits counted in nats (5.5) or a diverged step would not.
    assert len(val) == 1 and 7.5 < val.iloc[0] < 8.3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small text documents with repeated structure, so a few steps visibly learn."""
    root = tmp_path_factory.mktemp("corpus")
    line = b"to be, or not to be, that is the question:\n"
    for i in range(5):
        (root / f"doc{i}.txt").write_bytes(line * (40 + 7 * i))
    return root


FIT_MODELS = ["megabyte", "decoder", "decoder_windowed", "perceiver_ar", "hourglass", "spacebyte"]


@pytest.mark.parametrize("name", FIT_MODELS)
def test_fit_each_model_through_the_cli(name, corpus, tmp_path, capfd, monkeypatch):
    """MEGABYTE through the console script in a child process, the others through the same ``main``
    in this process (5 s less start-up each)."""
    run = tmp_path / "run"
    args = [
        "fit",
        f"--config={CONFIGS / f'{name}_tiny.yaml'}",
        *TINY,
        f"--data.init_args.paths={corpus}",
        f"--run_dir={run}",
    ]
    if name == "megabyte":
        result = bytelab(*args, cache=tmp_path / "cache")
        assert result.returncode == 0, result.stderr[-3000:]
        assert noise(result.stdout + result.stderr) == []  # no tips, no deprecation warnings
        stdout = result.stdout
    else:
        monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
        assert main(args) == 0
        stdout = capfd.readouterr().out
    metrics = pd.read_csv(run / "metrics.csv")
    val = metrics["val/bpb"].dropna()
    # Measured: 7.36-7.49 after 3 steps, 6.70-6.79 after 6 (the repeated line is easy to learn).
    assert len(val) == 2 and val.iloc[-1] < 7.1 and val.iloc[-1] < val.iloc[0] - 0.4
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "config.yaml").exists() and (run / "tensorboard").is_dir()
    assert "val/bpb" in stdout  # one printed line per validation
    # The model summary's total: the configured model's analytic forward FLOPs of one 96-byte window.
    model = build_model(yaml.safe_load((run / "config.yaml").read_text())["model"]["model"])
    assert f"Total FLOPs: {get_human_readable_count(int(model.forward_flops(96)))}" in stdout


def test_resume_from_last_checkpoint_continues_the_run(corpus, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = [
        f"--config={CONFIGS / 'decoder_tiny.yaml'}",
        *TINY,
        f"--data.init_args.paths={corpus}",
        f"--run_dir={run}",
    ]
    first = bytelab("fit", *common, "--trainer.max_steps=3", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    second = bytelab("fit", *common, "--trainer.max_steps=6", "--ckpt_path=last", cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    # Nothing claims that the earlier logs will be deleted (they are kept, below) or warns that the
    # run's own checkpoint directory exists.
    assert noise(second.stdout + second.stderr) == [], second.stderr[-3000:]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    # Bytes seen are the windows' own (some are short, at a document's start): those of samples 0..23.
    data = TextBytes(str(corpus), seq_len=96, cache_dir=str(cache))
    data.setup()
    windows = data.train_dataset()
    seen = [sum(len(windows[i]) for i in range(n)) for n in (12, 24)]
    assert [checkpoint["bytelab"]["bytes_seen"], resumed["bytelab"]["bytes_seen"]] == seen
    restored = ByteLM.from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    assert isinstance(restored.model, Decoder) and restored.bytes_seen == seen[1]
    weights = resumed["state_dict"]["model.head.weight"]
    assert torch.equal(restored.model.head.weight, weights)
    validated = bytelab("validate", *common, "--ckpt_path=last", cache=cache)
    assert validated.returncode == 0, validated.stderr[-3000:]
    # Each invocation logs a fresh metrics.csv; the earlier parts of the curve are kept in order.
    first, resumed = (pd.read_csv(run / name)["step"] for name in ("metrics.1.csv", "metrics.2.csv"))
    assert first.max() < 3 <= resumed.min() and "val/bpb" in pd.read_csv(run / "metrics.csv")


def test_help_lists_every_subcommand_once_by_group(capsys):
    assert main([]) == 0
    alone = capsys.readouterr().out
    assert main(["--help"]) == 0 and capsys.readouterr().out == alone
    groups = [line for line in alone.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert groups == ["train and evaluate:", "run studies:", "analyse:", "generate and benchmark:", "data:"]
    listed = [line.split()[0] for line in alone.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted([*COMMANDS, "fit", "validate", "test"])
    assert "  compare   Run a compute-matched comparison of two decoders, PerceiverAR and MEGABYTE" in alone


def test_help_lines_are_the_first_lines_of_the_subcommands_docstrings():
    lines = {name: line for commands in SUBCOMMANDS.values() for name, line in commands.items()}
    for name in COMMANDS:
        assert lines[name] == inspect.getdoc(command(name)).splitlines()[0], name


@pytest.mark.parametrize(
    "args,line",
    [
        (["predict"], "bytelab: error: no subcommand 'predict': bytelab --help lists them"),
        (
            ["comapre"],
            "bytelab: error: no subcommand 'comapre': did you mean 'compare'? bytelab --help lists them",
        ),
    ],
)
def test_an_unknown_subcommand_is_one_line(args, line, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err == line + "\n"


def test_each_subcommand_still_lists_its_options(capsys):
    for args, option in ((["generate", "--help"], "--ckpt CKPT"), (["fit", "--help"], "--trainer.max_steps")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 0 and option in capsys.readouterr().out


DECODER = f"--config={CONFIGS / 'decoder_tiny.yaml'}"
FIT_HELP = " (see bytelab fit --help)"
BAD_OPTIONS = {
    "path that does not exist": (
        ["fit", DECODER, "--data.init_args.paths=/nonexistent"],
        "paths='/nonexistent' does not exist: give a file, a folder, a glob pattern, or None for Shakespeare"
        " (run with --debug for the traceback)",
    ),
    "value of the wrong type": (
        ["fit", DECODER, "--trainer.max_steps=abc"],
        "--trainer.max_steps=abc: expected an int" + FIT_HELP,
    ),
    "wrong type inside a class": (
        ["fit", DECODER, "--data.init_args.batch_size=abc"],
        "--data.init_args.batch_size=abc: expected an int" + FIT_HELP,
    ),
    "wrong type or null": (
        ["compare", "--jobs=abc"],
        "--jobs=abc: expected an int or null (see bytelab compare --help)",
    ),
    "not one of the choices": (
        ["compare", "--preset=smok"],
        "--preset=smok: not one of the choices: did you mean smoke? (see bytelab compare --help)",
    ),
    "unknown class": (
        ["fit", DECODER, "--model.model=Decodr"],
        "--model.model=Decodr: no such class: did you mean Decoder?" + FIT_HELP,
    ),
    "unknown class, nothing near": (
        ["fit", DECODER, "--model.model=modules.Nope"],
        "--model.model=modules.Nope: no such class (known: Decoder, HNet, Hourglass, Megabyte, PerceiverAR, "
        "SpaceByte)" + FIT_HELP,
    ),
    "data config that does not exist": (
        ["compare", "--data=missing.yaml"],
        "--data=missing.yaml: no such file (nor a class name) (see bytelab compare --help)",
    ),
    "unknown option": (
        ["fit", DECODER, "--trainer.max_stepz=5"],
        "unknown option --trainer.max_stepz: did you mean --trainer.max_steps?" + FIT_HELP,
    ),
    "unknown option of a class": (
        ["fit", DECODER, "--model.model.init_args.d_modl=5"],
        "unknown option --model.model.init_args.d_modl: did you mean --model.model.init_args.d_model?"
        + FIT_HELP,
    ),
    "unknown option of a subcommand": (
        ["compare", "--jobss=2"],
        "unknown option --jobss: did you mean --jobs? (see bytelab compare --help)",
    ),
    "config that is not a mapping": (
        ["fit", "--config={listing}"],
        "--config {listing}: holds a list, not a mapping of options (key: value lines)" + FIT_HELP,
    ),
    "config that does not exist": (
        ["fit", "--config={missing}"],
        "--config {missing}: no such file" + FIT_HELP,
    ),
}


@pytest.mark.parametrize("args,line", list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_a_bad_option_is_one_short_line_that_names_it_and_the_fix(args, line, tmp_path, capsys):
    """The whole of stderr is one line: the option, the value, the fix, in at most 160 characters
    before the pointer to --help or --debug (jsonargparse's own message was up to 620)."""
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    paths = {"listing": listing, "missing": tmp_path / "missing.yaml"}
    args = [arg.format(**paths) for arg in args]
    assert main([*args, f"--run_dir={tmp_path / 'run'}"] if args[0] == "fit" else args) == 2
    err = capsys.readouterr().err
    assert err == f"bytelab: error: {line.format(**paths)}\n"
    assert len(err.partition(" (")[0]) <= 160


@pytest.mark.faults
@pytest.mark.parametrize(
    "args,message",
    [
        (["--data.init_args.paths={empty}"], "holds no bytes"),
        (["--data.init_args.paths={missing}"], "missing"),
        (["--model.model.init_args.max_seq_len=100"], "max_seq_len=100 must be a multiple of patch_size=8"),
        (["--config={perceiver}", "--data.init_args.score_len=96"], "score_len=96 exceeds the 32 positions"),
        (["--global_batch=12", "--data.init_args.batch_size=8"], "global_batch=12 is not a whole number"),
    ],
    ids=[
        "empty corpus",
        "missing path",
        "max_seq_len not a multiple of patch_size",
        "score_len above num_latents",
        "global batch not a multiple of the batch",
    ],
)
def test_bad_input_is_a_one_line_error(args, message, tmp_path, corpus):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_bytes(b"")
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing"}
    perceiver = [
        f"--config={CONFIGS / 'perceiver_ar_tiny.yaml'}",
        "--model.model.init_args.num_latents=32",
    ]
    extra = []
    for arg in args:
        if arg == "--config={perceiver}":
            extra += perceiver
        else:
            extra.append(arg.format(**paths))
    result = bytelab(
        "fit",
        f"--config={CONFIGS / 'megabyte_tiny.yaml'}",
        *TINY,
        f"--data.init_args.paths={corpus}",
        *extra,
        f"--run_dir={tmp_path / 'run'}",
        cache=tmp_path / "cache",
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and message in lines[-1] and "Traceback" not in result.stderr, result.stderr[-2000:]
