"""``bytelab bench``: training throughput, peak memory and achieved FLOP/s over sequence lengths,
cached and uncached generation speed, and issue 6's efficiency targets as a pass/fail table.

One idea per file: ``presets.py`` (what a run measures, the models from ``modules/sizes.py``, the
targets' thresholds), ``workers.py`` (one training configuration in its own process), ``measure.py``
(the training and generation measurements), ``targets.py`` (measured ratios against the
thresholds), ``report.py`` (plots and ``summary.md``) and ``command.py`` (the subcommand).
"""
