"""simtrack's benchmarks: ``python -m bench ingest [--quick]`` (see bench/ingest.py)."""
