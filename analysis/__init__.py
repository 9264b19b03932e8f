"""bytelab analysis: run directories -> pandas -> tables, fits and plots (``bytelab analyze``)."""
