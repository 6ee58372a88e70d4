"""Step time of the fused search step under each lean form, against the form-free step and eager, on CPU.

Every setting takes one search step per round over one model in one process (drift on a shared machine
favours none; the order reversed every other round, every step of a round drawing the same Gumbel samples,
glibc's heap trimmed before each step); per setting
the median step and the median of each round's ratio to eager and to the step without any lean form
(`none`), in wall and in process CPU time. What pynas/nn/ops.py's CPU defaults were decided from.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lean_forms_cpu.py --layout channels-last --rounds 5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lean_forms_cpu.py --layout channels-last --rounds 8 \
        --settings bn_output+pool_indices bn_output+pool_indices+sep_relu
"""
import argparse
import datetime
import statistics
import sys
import time

import torch

from pynas.bench.search import build, fused_gumbel, make_batches, trim_heap, use_path
from pynas.io import write_json
from pynas.nn.ops import LEAN_FORMS, lean_forms

OFF = {form: False for form in LEAN_FORMS}
# Without --settings: each form alone, the former CPU default (every form but depthwise) and every form.
DEFAULT_SETTINGS = [*LEAN_FORMS, "bn_output+pool_indices+sep_relu+pool_bn", "+".join(LEAN_FORMS)]


class WithForms:
    """The supernet with the named lean forms on and the others off."""

    def __init__(self, model, forms):
        self.model, self.choices = model, {**OFF, **{f: True for f in forms}}

    def __call__(self, x):
        with lean_forms(**self.choices):
            return self.model(x)


def measure(method: str, layout: str, settings, rounds: int, batch_size: int) -> dict:
    model, strategy = build(method, 16, 8, layout=layout)
    generator = model.arch.generator
    train, val = make_batches(batch_size, 32)
    names = ["eager", "none", *settings]
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up
        state = generator.get_state()
        for name in names if r % 2 == 0 else names[::-1]:
            generator.set_state(state)
            use_path(strategy, "eager" if name == "eager" else "fused", fused_gumbel(generator))
            if name != "eager":
                strategy.forward = WithForms(model, [] if name == "none" else name.split("+"))
            trim_heap()
            start, cpu_start = time.perf_counter(), time.process_time()
            strategy.step(train, val)
            if r:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
        if r:
            print(r, {n: round(wall[n][-1], 2) for n in names}, file=sys.stderr, flush=True)
    out = dict(layout=layout, method=method, batch_size=batch_size, threads=torch.get_num_threads(), rounds=rounds,
               wall_s=wall, cpu_s=cpu)
    for key, ts in (("wall", wall), ("cpu", cpu)):
        out[f"{key}_median_s"] = {n: statistics.median(v) for n, v in ts.items()}
        for ref in ("eager", "none"):
            out[f"{key}_speed_vs_{ref}"] = {n: statistics.median(a / b for a, b in zip(ts[ref], v))
                                           for n, v in ts.items()}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("darts", "darts-2nd", "single-level", "snas", "gdas"), default="darts")
    parser.add_argument("--layout", choices=("channels-last", "nchw"), default="channels-last")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="lean forms joined by '+', each setting timed with those forms on and the rest off")
    parser.add_argument("--out", default=None, help="JSON file (default: results/lean-forms-cpu-<layout>-<date>.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    result = measure(args.method, args.layout, args.settings, args.rounds, args.batch_size)
    result.update(torch=torch.__version__, date=stamp.isoformat(timespec="seconds"))
    for name, median in result["wall_median_s"].items():
        print(f"{name:<42}{median:>7.2f} s  {result['wall_speed_vs_eager'][name]:.2f}x eager  "
              f"{result['wall_speed_vs_none'][name]:.2f}x none")
    method = "" if args.method == "darts" else f"{args.method}-"
    path = args.out or f"benchmarks/results/lean-forms-cpu-{method}{args.layout}-{stamp:%Y%m%d}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
