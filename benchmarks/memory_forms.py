"""Activation memory and step time of the fused `darts` step under each memory form.

Activations (`act. MB`, pynas.bench.search.saved_activations_mb: unique storages one forward keeps for
backward; with checkpointing the checkpointed forward's plus the largest cell's recomputation) for the
eager path and each fused variant; then the fused variants' step times, taking turns step by step in
one process (drift on a shared machine favours none), median after warm-up. Writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_forms.py --batch-size 16 --steps 3
"""
import argparse
import datetime
import json
import statistics
import sys
import time

import torch

from pynas.bench.search import activations_mb, build, make_batches, use_path
from pynas.io import write_json
from pynas.nn.ops import lean_forms

# name: (lean_forms choices, checkpoint_cells); `before` is the fused path as it was (no pool_bn form).
VARIANTS = {
    "before": (dict(pool_bn=False), False),
    "default": ({}, False),
    "depthwise": (dict(depthwise=True), False),
    "pool_bn+depthwise+checkpoint": (dict(depthwise=True), True),
    "checkpoint": ({}, True),
}


def activations(size: dict, layout: str, names) -> dict:
    out = {"eager": activations_mb("darts", "eager", layout=layout, **size)}
    for name in names:
        forms, checkpoint = VARIANTS[name]
        with lean_forms(**forms):
            out[name] = activations_mb("darts", "fused", checkpoint_cells=checkpoint, layout=layout, **size)
        print(f"{name}: {out[name]:.1f} MB ({out[name] / out['eager']:.3f}x eager {out['eager']:.1f})",
              file=sys.stderr, flush=True)
    return out


def times(size: dict, layout: str, names, warmup: int, steps: int) -> dict:
    model, strategy = build("darts", size["C"], size["layers"], layout=layout)
    train, val = make_batches(size["batch_size"], size["image_size"])
    ms = {n: [] for n in names}
    for i in range(warmup + steps):
        for name in names:
            forms, checkpoint = VARIANTS[name]
            use_path(strategy, "fused", checkpoint_cells=checkpoint)
            with lean_forms(**forms):
                start = time.perf_counter()
                strategy.step(train, val)
                elapsed = time.perf_counter() - start
            if i >= warmup:
                ms[name].append(1e3 * elapsed)
            print(f"step {i} {name}: {elapsed:.1f} s", file=sys.stderr, flush=True)
    return {n: dict(step_ms=statistics.median(v), steps_ms=v) for n, v in ms.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--layout", default="auto", choices=("auto", "nchw", "channels-last"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (0: activations only)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-activations", action="store_true", help="time only (the eager forward at batch 64 "
                        "leaves a fragmented heap behind: time in a fresh process)")
    parser.add_argument("--out", default="", help="JSON file to write ('' to print only)")
    args = parser.parse_args()
    size = dict(batch_size=args.batch_size, C=args.C, layers=args.layers, image_size=args.image_size)
    result = dict(benchmark="memory_forms", date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, threads=torch.get_num_threads(), size=size, layout=args.layout,
                  variants={n: dict(lean_forms=f, checkpoint_cells=c) for n, (f, c) in VARIANTS.items()},
                  activations_mb={} if args.no_activations else activations(size, args.layout, args.variants))
    if args.steps:
        result["timing"] = "fused variants taking turns step by step in one process, median after warm-up"
        result["times"] = times(size, args.layout, args.variants, args.warmup, args.steps)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
