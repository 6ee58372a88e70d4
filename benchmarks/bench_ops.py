"""Fused pynas ops vs eager PyTorch; the same as `pynas bench` (see --help)."""
from pynas.bench.ops import main

if __name__ == "__main__":
    raise SystemExit(main())
