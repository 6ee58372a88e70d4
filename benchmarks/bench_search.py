"""Whole search steps, fused supernet vs the eager way; the same as `pynas bench search` (see --help)."""
from pynas.bench.search import main

if __name__ == "__main__":
    raise SystemExit(main())
