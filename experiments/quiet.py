"""The libraries' messages that a normal ``bytelab`` run should not print, silenced where it starts.

Each is matched by its exact text (and category, for warnings), so anything else they say still
shows, and nothing here reaches code that imports bytelab as a library.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex): what Lightning and torch warn about on every run, with why it is noise.
KNOWN_WARNINGS = [
    # torch 2.15 deprecates a check that Lightning 2.6's _pytree still makes, at every fit.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Not what happens: bytelab moves metrics.csv aside as metrics.N.csv first (keep_earlier_metrics).
    (UserWarning, r"Experiment logs directory .* exists and is not empty\. Previous log files"),
    # Every run owns one checkpoints/ directory, which --ckpt_path last resumes from.
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),
    # Untrue here: ByteDataModule's state puts the sampler after the last window trained on
    # (datamodules/bytes.py), and tests/test_cli.py checks that a resumed run sees those bytes.
    (UserWarning, r"You're resuming from a checkpoint that ended before the epoch ended"),
    # bytelab passes LightningCLI the arguments it has already read from sys.argv.
    (UserWarning, r"LightningCLI's args parameter is intended"),
]

# Lightning's advertisement at every Trainer start (rank_zero_info, a log record, not a warning).
TIP = "💡 Tip:"


class DropTip(logging.Filter):
    """Drops Lightning's tips, keeps every other record of its logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP)


def quiet() -> None:
    """Silence the known messages for this process (idempotent)."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropTip) for f in log.filters):
        log.addFilter(DropTip())
