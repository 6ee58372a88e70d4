"""The default search against random search, as a figure (never a test).

For each seed: the default `pynas search` (embedded digits), then `pynas train`
of its genotype and of a uniformly random genotype of the same space (same
protocol, same seed). Writes JSON and a Markdown table.

    .venv/bin/python benchmarks/search_vs_random.py --seeds 0 1 2 --out benchmarks/results
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from pynas.genotype import random_genotype
from pynas.nn import DARTS


def _pynas(*args):
    subprocess.run([sys.executable, "-m", "pynas", *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)


def _test_acc(run_dir):
    with open(os.path.join(run_dir, "result.json")) as f:
        return json.load(f)["test_acc"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="runs/search-vs-random")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        start = time.time()
        search = os.path.join(args.work, f"search-{seed}")
        _pynas("search", "--seed", str(seed), "--out", search)
        with open(os.path.join(search, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        largest = [max(row) for t in ("normal", "reduce") for row in last["arch"][t]["probabilities"]]
        searched = os.path.join(args.work, f"train-searched-{seed}")
        _pynas("train", "--genotype", os.path.join(search, "genotype.txt"), "--seed", str(seed), "--out", searched)
        rand = os.path.join(args.work, f"train-random-{seed}")
        _pynas("train", "--genotype", str(random_genotype(DARTS.ops, seed=seed)), "--seed", str(seed), "--out", rand)
        rows.append({"seed": seed, "searched_test_acc": _test_acc(searched), "random_test_acc": _test_acc(rand),
                     "mean_largest_probability": sum(largest) / len(largest),
                     "genotype": open(os.path.join(search, "genotype.txt")).read().strip(),
                     "seconds": time.time() - start})
        print(rows[-1], flush=True)
    summary = {k: statistics.mean(r[k] for r in rows) for k in ("searched_test_acc", "random_test_acc")}
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d")
    with open(os.path.join(args.out, f"search-vs-random-{stamp}.json"), "w") as f:
        json.dump({"rows": rows, "mean": summary, "threads": os.environ.get("OMP_NUM_THREADS")}, f, indent=1)
    lines = ["| seed | searched child test acc | random child test acc | mean largest p(α) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['seed']} | {r['searched_test_acc']:.4f} | {r['random_test_acc']:.4f} | "
              f"{r['mean_largest_probability']:.3f} |" for r in rows]
    lines.append(f"| mean | {summary['searched_test_acc']:.4f} | {summary['random_test_acc']:.4f} | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
