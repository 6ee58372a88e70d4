"""The modern DARTS variants on NAS-Bench-201 (issue 28): each method's NB201 search as its authors' code runs it,
the benchmark's six numbers of the final cell (CIFAR-10 valid/test, CIFAR-100 valid/test, ImageNet16-120
valid/test; 200 epochs, mean over the benchmark's seeds), mean ± std over the seeds, and the per-epoch trajectory of
the CIFAR-10 test accuracy of each epoch's cell.

Methods (METHODS: adding one is one entry):
- β-DARTS: preset beta-darts-nb201 (Sunshine-Ye/Beta-DARTS nasbench201/train_search.py, its only runnable search).
- SDARTS-ADV: preset sdarts-adv-nb201 (xiangning-chen/SmoothDARTS nasbench201/train_search.py
  `--perturb_alpha pgd_linf`).
- SDARTS-RS: preset sdarts-rs-nb201 (SmoothDARTS nasbench201/train_search.py `--perturb_alpha random`, lines
  110-111, `Random_alpha`, every other value as for pgd_linf). SmoothDARTS' README lists no NB201 command for either.

Every search runs `pynas search --benchmark PATH` (NAS-Bench-201's .pth, NATS-Bench's .pickle.pbz2 or its -simple
directory), which logs each epoch's cell and its numbers in metrics.jsonl; no child is trained. Searches are not
rerun; a rerun with another --benchmark looks each logged cell up in that file (`pynas evaluate --genotype CELL
--benchmark PATH --json`). The papers' own NAS-Bench-201 numbers are not typed here: their texts could not be read
(../shared/research/modern_methods.md), so the table has no paper column.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "modern_nb201"
SOURCE = ("β-DARTS (Ye et al., CVPR 2022), SDARTS (Chen & Hsieh, ICML 2020): their NAS-Bench-201 tables; the papers' "
          "numbers are not reproduced here (texts not readable): see the papers")
# --methods name: (table label, preset, options after it).
METHODS = {
    "beta-darts": ("β-DARTS", "beta-darts-nb201", ()),
    "sdarts-adv": ("SDARTS-ADV", "sdarts-adv-nb201", ()),
    "sdarts-rs": ("SDARTS-RS", "sdarts-rs-nb201", ()),
    "drnas": ("DrNAS", "drnas-nb201", ()),
    "drnas-progressive": ("DrNAS (progressive)", "drnas-nb201-progressive", ()),
}
# The benchmark's numbers (pynas.nb201_benchmark.METRICS) and their columns.
NUMBERS = {"cifar10_valid": "CIFAR-10 valid (%)", "cifar10_test": "CIFAR-10 test (%)",
           "cifar100_valid": "CIFAR-100 valid (%)", "cifar100_test": "CIFAR-100 test (%)",
           "imagenet16_valid": "ImageNet16-120 valid (%)", "imagenet16_test": "ImageNet16-120 test (%)"}
SMOKE_NB201 = ["--layers", "3", "--epochs", "2", "--C", "4"]  # NB201 needs a multiple of 3 cells; 2 epochs: a curve


def add_arguments(parser):
    parser.add_argument("--benchmark", metavar="PATH", required=True,
                        help="a NAS-Bench-201 / NATS-Bench file: the table's numbers are its look-ups")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of: {', '.join(METHODS)}")


def main(argv=None):
    args = common.parse_args(NAME, __doc__, add_arguments, argv)
    methods = parse_methods(args.methods)
    benchmark = os.path.abspath(args.benchmark)
    if not os.path.exists(benchmark):  # before the searches, not after them
        raise ValueError(f"--benchmark {args.benchmark}: no such file or directory")
    run = common.Runner(args)
    jobs = [(m, seed) for m in methods for seed in args.seeds]
    dirs = dict(zip(jobs, run.parallel(lambda j: run.search(
        f"{j[0]}-seed{j[1]}", METHODS[j[0]][1], list(METHODS[j[0]][2]) + ["--benchmark", benchmark], j[1],
        SMOKE_NB201), jobs)))
    epochs = {j: epoch_numbers(run, dirs[j], benchmark) for j in jobs}

    missing = sorted({e["cell"] for logged in epochs.values() for e in logged if e.get("missing")})
    if missing:
        raise common.PynasError(f"--benchmark {args.benchmark} has no record of {', '.join(missing)}")
    rows, trajectories = [], {}
    for m in methods:
        label, preset, extra = METHODS[m]
        finals = [epochs[(m, seed)][-1] for seed in args.seeds]
        row = {"method": label, "search": " ".join(["--preset", preset, *extra]), "cells": [f["cell"] for f in finals],
               "benchmark": finals}
        for key, column in NUMBERS.items():
            mean, std = common.mean_std([f.get(key) for f in finals])
            row[column], row[key] = common.pm(mean, std), mean
        rows.append(row)
        per_seed = {seed: [e.get("cifar10_test") for e in epochs[(m, seed)]] for seed in args.seeds}
        trajectories[label] = {"epochs": [e["epoch"] for e in epochs[(m, args.seeds[0])]], "per_seed": per_seed,
                               "mean": [common.mean_std(at)[0] for at in zip(*per_seed.values())]}
    write_trajectories(args, trajectories)
    columns = ["method", "search"] + list(NUMBERS.values())
    notes = ["Each number: the benchmark's accuracy (200 epochs, mean over its seeds) of each search's final cell "
             "(argmax per edge, `none` included), mean ± std over the seeds; no child is trained.",
             "The papers' NAS-Bench-201 numbers: see the papers (their texts could not be read here, "
             "../shared/research/modern_methods.md); none is typed in.",
             f"Per-epoch CIFAR-10 test accuracy of each epoch's cell: {NAME}_trajectory.json, {NAME}_trajectory.png."]
    common.write_table(args, run, NAME, "Modern DARTS variants on NAS-Bench-201", SOURCE, columns, rows, notes)
    return rows


def parse_methods(text):
    """The --methods list, in the order given; an unknown or repeated name is a one-line error."""
    names = [n for n in str(text).split(",") if n != ""]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--methods must name each of {', '.join(METHODS)} at most once, got {text!r}")
    return names


def epoch_numbers(run, search_dir, benchmark):
    """Each epoch's {"epoch", "cell", the six numbers} or {"epoch", "cell", "missing": True}: as metrics.jsonl
    logged them when the search read this benchmark (config.json's path), else each distinct cell looked up in it
    (`pynas evaluate --benchmark`, run again on every rerun, as darts_pt_nb201's look-ups)."""
    metrics = common.read_metrics(search_dir)
    logged = [e["benchmark"] for e in metrics]
    if common.read_json(os.path.join(search_dir, "config.json")).get("benchmark") != benchmark:
        looked_up = {}
        for cell in dict.fromkeys(e["cell"] for e in logged):
            out = os.path.join(search_dir, f"lookup-{len(looked_up)}.json")
            run.pynas(["evaluate", "--genotype", cell, "--benchmark", benchmark, "--json", out])
            looked_up[cell] = common.read_json(out)
        logged = [looked_up[e["cell"]] for e in logged]
    return [dict(numbers, epoch=e["epoch"]) for numbers, e in zip(logged, metrics)]


def write_trajectories(args, trajectories):
    """<out>/<NAME>_trajectory.json ({method: {"epochs": [...], "per_seed": {seed: [accuracy per epoch]},
    "mean": [...]}}) and its plot."""
    with open(os.path.join(args.out, f"{NAME}_trajectory.json"), "w") as f:
        json.dump({"number": "cifar10_test", "unit": "percent", "mode": args.mode, "seeds": args.seeds,
                   "methods": trajectories}, f, indent=1)
    common.line_plot(os.path.join(args.out, f"{NAME}_trajectory.png"),
                     {label: (t["epochs"], t["mean"]) for label, t in trajectories.items()},
                     "search epoch", "CIFAR-10 test accuracy (%) of the epoch's cell",
                     f"NAS-Bench-201 look-ups during the search ({args.mode}, mean over seeds)")


if __name__ == "__main__":
    main()
