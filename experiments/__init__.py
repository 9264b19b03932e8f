"""bytelab experiments: the command line, configs, sweeps and benchmarks."""
