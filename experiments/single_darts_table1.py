"""Single-DARTS (002) Table 1: NAS-Bench-201, Single-DARTS (preset single-darts-nb201: single level, sigmoid,
α = -ln 7) against DARTS on the NB201 supernet (darts-cifar10 with --space nb201 --layers 15, as NAS-Bench-201 ran
it). The paper reads its accuracies from the benchmark: with `--benchmark PATH` (NAS-Bench-201's .pth, NATS-Bench's
.pickle.pbz2 or its -simple directory) so does pynas (`pynas search --benchmark`: the final cell's CIFAR-10 valid and
test accuracy, 200 epochs, mean over the benchmark's seeds). Without it, the derived cell is trained with NB201's
protocol (`pynas train` on the NB201 string): its test accuracy stands beside the paper's test column, the
supernet's final validation accuracy beside the validation column.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "single_darts_table1"
SOURCE = "Single-DARTS (Hou et al.), Table 1: NAS-Bench-201 CIFAR-10 validation / test accuracy (%), 5 runs"
METHODS = {"DARTS": ("darts-cifar10", ["--space", "nb201", "--layers", "15"], 39.77, 54.30),
           "Single-DARTS": ("single-darts-nb201", [], 91.55, 94.36)}
OPTIMAL = (91.61, 94.37)
SMOKE_NB201 = ["--layers", "3"]  # NB201 needs a multiple of 3 cells


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv=argv, add_arguments=lambda parser: parser.add_argument(
        "--benchmark", metavar="PATH", help="a NAS-Bench-201 / NATS-Bench file: the table's numbers are its look-ups"))
    run = common.Runner(args)
    jobs = [(m, seed) for m in METHODS for seed in args.seeds]
    lookup = ["--benchmark", os.path.abspath(args.benchmark)] if args.benchmark else []
    dirs = dict(zip(jobs, run.parallel(lambda j: run.search(f"{j[0]}-seed{j[1]}", METHODS[j[0]][0],
                                                            METHODS[j[0]][1] + lookup, j[1], SMOKE_NB201), jobs)))
    genotypes = {j: common.read_text(os.path.join(dirs[j], "genotype.txt")) for j in jobs}
    rows = benchmark_rows(args, dirs, genotypes, jobs) if args.benchmark else trained_rows(args, run, dirs, genotypes,
                                                                                          jobs)
    rows.append({"method": "optimal (benchmark)", "paper val (%)": OPTIMAL[0], "paper test (%)": OPTIMAL[1]})
    ours = "benchmark test" if args.benchmark else "child test"
    common.bar_plot(os.path.join(args.out, f"{NAME}.png"), list(METHODS),
                    {"paper test": [METHODS[m][3] for m in METHODS],
                     f"pynas {ours} ({args.mode})": [r["test_acc"] for r in rows[:2]]},
                    "accuracy (%)", "Single-DARTS Table 1 (NAS-Bench-201, CIFAR-10)")
    if args.benchmark:
        columns = ["method", "paper val (%)", "pynas benchmark val (%)", "paper test (%)", "pynas benchmark test (%)"]
        notes = ["pynas' columns: the benchmark's CIFAR-10 valid (cifar10-valid, x-valid) and test (cifar10, "
                 "ori-test) accuracy of each search's final cell, 200 epochs, mean over the benchmark's seeds."]
    else:
        columns = ["method", "paper val (%)", "pynas supernet val (%)", "paper test (%)", "pynas child test (%)"]
        notes = ["pynas' validation column is the supernet's, not the benchmark's validation accuracy of the "
                 "derived cell."]
    common.write_table(args, run, NAME, "Single-DARTS Table 1: NAS-Bench-201", SOURCE, columns, rows, notes)
    return rows


def trained_rows(args, run, dirs, genotypes, jobs):
    """Each final cell trained with NB201's protocol; the supernet's validation accuracy beside it."""
    trained = dict(zip(jobs, run.parallel(lambda j: run.train(f"train-{j[0]}-seed{j[1]}", genotypes[j], j[1]), jobs)))
    rows = []
    for m, (_, _, p_val, p_test) in METHODS.items():
        js = [j for j in jobs if j[0] == m]
        val, val_sd = common.mean_std([100 * common.read_metrics(dirs[j])[-1]["val_acc"] for j in js])
        test, test_sd = common.mean_std([100 * trained[j]["test_acc"] for j in js])
        rows.append({"method": m, "paper val (%)": p_val, "pynas supernet val (%)": common.pm(val, val_sd),
                     "paper test (%)": p_test, "pynas child test (%)": common.pm(test, test_sd),
                     "val_acc": val, "test_acc": test, "genotypes": [genotypes[j] for j in js]})
    return rows


def benchmark_rows(args, dirs, genotypes, jobs):
    """The benchmark's numbers of each search's final cell, as its last epoch logged them."""
    rows = []
    for m, (_, _, p_val, p_test) in METHODS.items():
        js = [j for j in jobs if j[0] == m]
        logged = [common.read_metrics(dirs[j])[-1]["benchmark"] for j in js]
        missing = [b["cell"] for b in logged if b.get("missing")]
        if missing:
            raise common.PynasError(f"--benchmark {args.benchmark} has no record of {', '.join(missing)}")
        val, val_sd = common.mean_std([b["cifar10_valid"] for b in logged])
        test, test_sd = common.mean_std([b["cifar10_test"] for b in logged])
        rows.append({"method": m, "paper val (%)": p_val, "pynas benchmark val (%)": common.pm(val, val_sd),
                     "paper test (%)": p_test, "pynas benchmark test (%)": common.pm(test, test_sd),
                     "val_acc": val, "test_acc": test, "genotypes": [genotypes[j] for j in js],
                     "benchmark": logged})
    return rows


if __name__ == "__main__":
    main()
