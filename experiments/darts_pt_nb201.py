"""DARTS-PT (001) Table 4, NAS-Bench-201 row (Sec. 5.2, 6.3): CIFAR-10 test error of the cell DARTS' α picks
(argmax per edge), of the cell PT selects from the same supernet, and of the cell PT selects from a supernet
trained with α fixed uniform.

Supernets: presets darts-pt-nb201 and darts-pt-nb201-fixed-alpha (ruocwang/darts-pt nasbench201/train_search.py:
DARTS first order, 100 epochs, N = 5). Selections: `pynas select --method nb201` (argmax, `none` included) and
`--method pt` (one random edge per round, 5 tuning epochs between decisions at lr 0.0025, criterion accuracy,
`none` a candidate; darts-pt exp_scripts/darts-proj-201.sh, blank-proj-201.sh). Like the paper, pynas trains no
child: `--benchmark PATH` (NAS-Bench-201's .pth, NATS-Bench's .pickle.pbz2 or its -simple directory) gives each
selected cell's recorded CIFAR-10 test accuracy (`cifar10`, ori-test, 200 epochs, mean over the benchmark's
seeds; `pynas evaluate --genotype G --benchmark PATH`, into select-*/benchmark.json), test error = 100 − that
accuracy. Searches and selections are not rerun, the look-ups always are: a rerun with another --benchmark reads
that one (PT's pt_trail.json keeps the numbers after each round from the file its selection ran with).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "darts_pt_nb201"
SOURCE = "DARTS-PT (Wang et al., ICLR 2021), Table 4, NAS-Bench-201 row: test error (%) on CIFAR-10"
# (row, supernet preset, selection, 001 Table 4 NAS-Bench-201 test error %)
ROWS = (("DARTS", "darts-pt-nb201", "nb201", 45.7),
        ("DARTS+PT", "darts-pt-nb201", "pt", 11.89),
        ("DARTS+PT (fix α)", "darts-pt-nb201-fixed-alpha", "pt", 6.20))
SUPERNETS = ("darts-pt-nb201", "darts-pt-nb201-fixed-alpha")
SMOKE_NB201 = ["--layers", "3"]  # NB201 needs a multiple of 3 cells


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv=argv, add_arguments=lambda parser: parser.add_argument(
        "--benchmark", metavar="PATH", required=True,
        help="a NAS-Bench-201 / NATS-Bench file: the table's numbers are its look-ups"))
    benchmark = os.path.abspath(args.benchmark)
    if not os.path.exists(benchmark):  # before the searches, not after them
        raise ValueError(f"--benchmark {args.benchmark}: no such file or directory")
    run = common.Runner(args)
    searches = [(preset, seed) for preset in SUPERNETS for seed in args.seeds]
    dirs = dict(zip(searches, run.parallel(
        lambda s: run.search(f"{s[0]}-seed{s[1]}", s[0], seed=s[1], smoke_extra=SMOKE_NB201), searches)))
    jobs = [(row, seed) for row in ROWS for seed in args.seeds]
    looked_up = dict(zip(jobs, run.parallel(lambda j: select(run, dirs[(j[0][1], j[1])], j[0][2], benchmark), jobs)))

    missing = sorted({b["cell"] for b in looked_up.values() if b.get("missing") or b.get("cifar10_test") is None})
    if missing:
        raise common.PynasError(f"--benchmark {args.benchmark} has no record of {', '.join(missing)} "
                                "(CIFAR-10 test accuracy)")
    rows = []
    for row in ROWS:
        label, preset, selection, paper = row
        found = [looked_up[(row, seed)] for seed in args.seeds]
        err, sd = common.mean_std([100 - b["cifar10_test"] for b in found])
        rows.append({"method": label, "supernet": preset, "selection": selection,
                     "paper test error (%)": paper, "pynas test error (%)": common.pm(err, sd),
                     "test_error": err, "cells": [b["cell"] for b in found], "benchmark": found,
                     "pt_rounds": [pt_rounds(dirs[(preset, seed)]) for seed in args.seeds] if selection == "pt"
                     else None})
    common.bar_plot(os.path.join(args.out, f"{NAME}.png"), [r["method"] for r in rows],
                    {"paper": [r["paper test error (%)"] for r in rows],
                     f"pynas ({args.mode})": [r["test_error"] for r in rows]},
                    "CIFAR-10 test error (%)", "DARTS-PT Table 4: NAS-Bench-201")
    columns = ["method", "supernet", "selection", "paper test error (%)", "pynas test error (%)"]
    notes = ["pynas' column: 100 − the benchmark's CIFAR-10 test accuracy (cifar10, ori-test, 200 epochs, mean over "
             "its seeds) of each selected cell, mean ± std over the seeds; no child is trained (as the paper).",
             "The paper's claim: PT extracts far better cells than α from the same DARTS supernet, and PT on a "
             "supernet trained with α fixed does better still."]
    common.write_table(args, run, NAME, "DARTS-PT Table 4: NAS-Bench-201, α vs PT vs fix-α + PT", SOURCE, columns,
                       rows, notes)
    return rows


def select(run, search_dir, method, benchmark):
    """`pynas select --method M --benchmark PATH` on a search run (not rerun once done), then `pynas evaluate
    --genotype G --benchmark PATH` on its cell (always: a rerun with another --benchmark reads that one); returns
    the look-up (the cell's numbers, or {"missing": True, "cell": ...} where the file lacks it)."""
    out = os.path.join(search_dir, f"select-{method}")
    argv = ["select", "--run", search_dir, "--method", method, "--benchmark", benchmark, "--out", out, "--quiet"]
    if run.args.smoke and method == "pt":
        argv += common.SMOKE_PT
    run.pynas(argv, done=os.path.join(out, "genotype.txt"))
    looked_up = os.path.join(out, "benchmark.json")
    run.pynas(["evaluate", "--genotype", common.read_text(os.path.join(out, "genotype.txt")), "--benchmark",
               benchmark, "--json", looked_up])
    return common.read_json(looked_up)


def pt_rounds(search_dir):
    """PT's decisions in order: (edge, operation kept, the benchmark's CIFAR-10 test error of the cell after the
    round's tuning, None where the file lacks that cell)."""
    trail = common.read_json(os.path.join(search_dir, "select-pt", "pt_trail.json"))
    return [(r["edge"], r["chosen"], None if r["benchmark"].get("cifar10_test") is None
             else 100 - r["benchmark"]["cifar10_test"]) for r in trail]


if __name__ == "__main__":
    main()
