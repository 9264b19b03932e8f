"""bytelab analysis: run directories -> pandas -> tables, fits and plots (``bytelab analyze``)."""


def main(argv: list[str]) -> int:
    """``bytelab analyze``; pandas and matplotlib load only when it runs, not with every ``bytelab``."""
    from .report import main as analyze

    return analyze(argv)
