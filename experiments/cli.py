"""The ``bytelab`` command line.

``bytelab fit|validate|test --config ...`` is LightningCLI (YAML composes model, data and trainer);
the other subcommands are plain functions registered in ``COMMANDS``. Every run lives in one fixed
directory (``--run_dir``): CSV and TensorBoard logs, the resolved config and ``checkpoints/``, so
``--ckpt_path last`` resumes the run that wrote it.
"""

from __future__ import annotations

import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import analysis
from analysis.atomic import DISK_FULL
from datamodules import ByteDataModule
from modules import ByteLM
from modules.checkpoint import verify_checkpoint

from . import bench, compare, generate, ranks, study, sweep
from .budget import ComputeBudget
from .callbacks import EXIT_PREEMPTED, FlopsModelSummary, PerfMonitor, Preemption, PrintMetrics
from .checkpoints import VerifiedCheckpointIO, resolve_resume
from .manifest import RunManifest
from .runlock import lock_run, release_runs

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIGS = [str(CONFIGS / "trainer" / "cpu.yaml"), str(CONFIGS / "data" / "text.yaml")]
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
COMMANDS: dict[str, Callable[[list[str]], int | None]] = {}
COMMANDS["generate"] = generate.main
COMMANDS["bench"] = bench.main
COMMANDS["sweep"] = sweep.main
COMMANDS["analyze"] = analysis.main
COMMANDS["compare"] = compare.main
COMMANDS["study"] = study.main


class ByteLabCLI(LightningCLI):
    """LightningCLI with a fixed run directory and bytelab's standard loggers and callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Directory for this run's logs, config and checkpoints (default: runs/<model class>).",
        )
        parser.add_argument(
            "--save_every_n_steps",
            type=int | None,
            default=None,
            help="Also write checkpoints/last.ckpt every N training steps (default: at each validation), "
            "so a killed run loses at most N steps.",
        )
        parser.add_lightning_class_args(ComputeBudget, "budget")

    def instantiate_trainer(self, **kwargs):  # noqa: ANN201 - same signature as LightningCLI
        config = self.config[self.subcommand]
        run_dir = Path(config.run_dir or Path("runs") / type(self.model.model).__name__.lower())
        self.run_dir = run_dir
        ranks.error_dir = run_dir / ranks.ERRORS
        if rank_zero_only.rank == 0:  # the other ranks of this run write nothing of their own here
            lock_run(run_dir)  # before anything below moves or writes a file of the run
        trainer_config = config.trainer
        kwargs.setdefault("default_root_dir", str(run_dir))
        kwargs.update(self.config_init[self.subcommand].budget.trainer_arguments(trainer_config.max_epochs))
        plugins = self.config_init[self.subcommand].trainer.plugins
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, VerifiedCheckpointIO()]
        if trainer_config.logger in (None, True):
            keep_earlier_metrics(run_dir)
            kwargs["logger"] = [
                CSVLogger(run_dir, name="", version=""),
                TensorBoardLogger(run_dir, name="", version="tensorboard"),
            ]
        callbacks = [
            *(self.config_init[self.subcommand].trainer.callbacks or []),
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/bpb"),
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                save_top_k=0,
                save_last=True,
                every_n_train_steps=config.save_every_n_steps,
                # One last.ckpt, replaced in place, even after a save this callback did not make
                # (Preemption's): never a last-v1.ckpt that --ckpt_path last would not read.
                enable_version_counter=False,
            ),
            LearningRateMonitor(logging_interval="step"),
            PrintMetrics(),
            PerfMonitor(),
            Preemption(run_dir / "checkpoints" / "last.ckpt"),
            RunManifest(run_dir, config.as_dict()),
        ]
        if trainer_config.enable_progress_bar is not False:
            callbacks.append(RichProgressBar())
        if trainer_config.enable_model_summary is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks
        ):
            callbacks.append(FlopsModelSummary())  # in place of Lightning's default, which counts 0 FLOPs
            kwargs["enable_model_summary"] = False  # (that default would otherwise be added beside it)
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads an explicit --ckpt_path (for its hyperparameters) before any hook runs:
        # check it first, so that a damaged or hostile file is one line, not a traceback.
        subcommand = self.config.get("subcommand")
        path = subcommand and self.config[subcommand].get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and Path(path).exists():
            verify_checkpoint(path)
        super()._parse_ckpt_path()

    def _check_checkpoint(self) -> None:
        """Resolve and check ``--ckpt_path`` before Lightning loads it, and load it as tensors and
        plain values only (``weights_only``), whatever the command line says."""
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = resolve_resume(config.get("ckpt_path"), self.run_dir)
        config["weights_only"] = True

    before_fit = before_validate = before_test = _check_checkpoint


def keep_earlier_metrics(run_dir: Path) -> None:
    """Move an existing ``metrics.csv`` to ``metrics.<n>.csv`` before a new logger starts.

    Lightning's CSVLogger deletes the file it finds in its directory, so resuming a run (or testing
    it) in the same run directory would lose the curve so far; the parts stay beside it, in order.
    """
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        part = 1 + sum(1 for _ in run_dir.glob("metrics.*.csv"))
        metrics.rename(run_dir / f"metrics.{part}.csv")


def lightning_main(args: Sequence[str]) -> None:
    """Run a LightningCLI subcommand with bytelab's defaults (CPU trainer, embedded text)."""
    # `args` is how main() hands over the arguments it has already filtered (--debug).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    ByteLabCLI(
        ByteLM,
        ByteDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # exit_on_error=False: a bad option raises ArgumentError, which main() prints as one line.
        parser_kwargs={
            "exit_on_error": False,
            **{
                name: {"default_config_files": DEFAULT_CONFIGS, "exit_on_error": False}
                for name in LIGHTNING_SUBCOMMANDS
            },
        },
        args=list(args),
    )


def one_line(error: BaseException) -> str:
    """An error message on one line (jsonargparse nests its explanations over several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def say(line: str) -> None:
    """Print one line to stderr in a single write: the ranks of a run share that stream, and print()
    writes the line and its newline separately, so two ranks' lines could interleave."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def report(line: str, status: int) -> int:
    """Print a one-line error, leave it for the other ranks of a distributed run, return ``status``."""
    say(line)
    ranks.record(line, status)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bytelab`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:]) or 0
        lightning_main(args)
    except SIGTERMException:  # Preemption saved the run and printed where; the job script may requeue
        return EXIT_PREEMPTED
    except ArgumentError as error:
        if debug:
            raise
        command = " ".join(args[:1])
        return report(f"bytelab: error: {one_line(error)} (see bytelab {command} --help)", 2)
    except (ValueError, FloatingPointError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        if debug:
            raise
        return report(f"bytelab: error: {one_line(error)} (run with --debug for the traceback)", 2)
    except OSError as error:
        if debug or error.errno not in DISK_FULL:
            raise
        return report(f"bytelab: error: {error.strerror}", 2)
    except RuntimeError as error:
        # Another rank failed and its process ended: say what it said, not that a socket closed.
        if debug or not ranks.in_distributed_run() or not ranks.peer_gone(error):
            raise
        peer = ranks.peer_error()
        if peer is None:
            return report(
                "bytelab: error: another process of this distributed run ended without a message "
                f"(killed, or out of memory?): {one_line(error)}",
                1,
            )
        say(peer[0])
        return peer[1]
    finally:
        release_runs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
