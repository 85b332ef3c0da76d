"""Step-time / throughput / MFU harness: `python -m benchmarks.run --help`."""
