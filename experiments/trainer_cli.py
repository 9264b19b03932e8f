"""``bytelab fit|validate|test``: LightningCLI with bytelab's run directory, loggers and callbacks.

YAML composes model, data and trainer (``--config``; defaults: the CPU trainer and the embedded
text). Every run lives in one fixed directory (``--run_dir``): CSV and TensorBoard logs, the resolved
config and ``checkpoints/``, so ``--ckpt_path last`` resumes the run that wrote it. Both the
``bytelab`` command and sweeps (which run ``bytelab fit`` in-process) start runs here.
"""

from __future__ import annotations

from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from datamodules import ByteDataModule
from modules import ByteLM
from modules.checkpoint import verify_checkpoint

from . import ranks
from .budget import ComputeBudget, accumulation
from .callbacks import FlopsModelSummary, PerfMonitor, Preemption, PrintMetrics
from .checkpoints import VerifiedCheckpointIO, resolve_resume
from .errors import guarded
from .manifest import RunManifest
from .option_errors import concise
from .runlock import lock_run

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_DATA = CONFIGS / "data" / "text.yaml"
DEFAULT_CONFIGS = [str(CONFIGS / "trainer" / "cpu.yaml"), str(DEFAULT_DATA)]
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


class ByteLabCLI(LightningCLI):
    """LightningCLI with a fixed run directory and bytelab's standard loggers and callbacks."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test: Lightning's ``predict`` writes model outputs, which a byte model
        has no use for (bits per byte are ``validate`` and ``test``)."""
        return {name: LightningCLI.subcommands()[name] for name in LIGHTNING_SUBCOMMANDS}

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
        parser.add_argument(
            "--global_batch",
            type=int | None,
            default=None,
            help="Training windows per optimiser step over all processes: the trainer accumulates "
            "global_batch / (data batch_size x world size) batches, whatever the number of GPUs "
            "(default: no accumulation unless trainer.accumulate_grad_batches says so).",
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
        trainer = super().instantiate_trainer(**kwargs)
        if config.global_batch is not None and self.subcommand == "fit":  # evaluation has no steps
            # The world size is known once the Trainer exists; the budget reads the accumulation
            # later, at fit setup, so its steps count the global batch.
            fixed = accumulation(config.global_batch, self.datamodule.batch_size, trainer.world_size)
            if trainer_config.accumulate_grad_batches not in (1, fixed):
                raise ValueError(
                    f"trainer.accumulate_grad_batches={trainer_config.accumulate_grad_batches} contradicts "
                    f"global_batch={config.global_batch} (which needs {fixed}): give only global_batch"
                )
            trainer.accumulate_grad_batches = fixed
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """LightningCLI's parse, with a bad option as one line that names it (``option_errors.py``)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            args = list(args or [])
            failed = self._subcommand_parsers.get(args[0], parser) if args else parser
            raise ArgumentError(None, concise(error, failed, args)) from error

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
    # `args` is how run_lightning() hands over the arguments bytelab has already filtered (--debug).
    ByteLabCLI(
        ByteLM,
        ByteDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # exit_on_error=False: a bad option raises ArgumentError, which guarded() prints as one line.
        parser_kwargs={
            "exit_on_error": False,
            **{
                name: {"default_config_files": DEFAULT_CONFIGS, "exit_on_error": False}
                for name in LIGHTNING_SUBCOMMANDS
            },
        },
        args=list(args),
    )


def run_lightning(args: Sequence[str], debug: bool = False) -> int:
    """``bytelab fit|validate|test ARGS``: its exit status, errors as one line."""
    args = list(args)
    return guarded(lambda: lightning_main(args), " ".join(args[:1]), debug)
