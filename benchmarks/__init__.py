"""litecomp benchmarks: ``python -m benchmarks [--quick] [--filter NAME] [--json PATH]``."""
