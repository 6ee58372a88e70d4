"""Single-DARTS (002) Table 1: NAS-Bench-201, Single-DARTS (preset single-darts-nb201: single level, sigmoid,
α = -ln 7) against DARTS on the NB201 supernet (darts-cifar10 with --space nb201 --layers 15, as NAS-Bench-201 ran
it). The paper reads its accuracies from the benchmark; pynas has no benchmark table, so the derived cell is trained
with NB201's protocol (`pynas train` on the NB201 string): its test accuracy stands beside the paper's test column,
the supernet's final validation accuracy beside the validation column.
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
    args = common.parse_args(NAME, __doc__, argv=argv)
    run = common.Runner(args)
    jobs = [(m, seed) for m in METHODS for seed in args.seeds]
    dirs = dict(zip(jobs, run.parallel(lambda j: run.search(f"{j[0]}-seed{j[1]}", METHODS[j[0]][0], METHODS[j[0]][1],
                                                            j[1], SMOKE_NB201), jobs)))
    genotypes = {j: common.read_text(os.path.join(dirs[j], "genotype.txt")) for j in jobs}
    trained = dict(zip(jobs, run.parallel(lambda j: run.train(f"train-{j[0]}-seed{j[1]}", genotypes[j], j[1]), jobs)))
    rows = []
    for m, (_, _, p_val, p_test) in METHODS.items():
        js = [j for j in jobs if j[0] == m]
        val, val_sd = common.mean_std([100 * common.read_metrics(dirs[j])[-1]["val_acc"] for j in js])
        test, test_sd = common.mean_std([100 * trained[j]["test_acc"] for j in js])
        rows.append({"method": m, "paper val (%)": p_val, "pynas supernet val (%)": common.pm(val, val_sd),
                     "paper test (%)": p_test, "pynas child test (%)": common.pm(test, test_sd),
                     "val_acc": val, "test_acc": test, "genotypes": [genotypes[j] for j in js]})
    rows.append({"method": "optimal (benchmark)", "paper val (%)": OPTIMAL[0], "paper test (%)": OPTIMAL[1]})
    common.bar_plot(os.path.join(args.out, f"{NAME}.png"), list(METHODS),
                    {"paper test": [METHODS[m][3] for m in METHODS],
                     f"pynas child test ({args.mode})": [r["test_acc"] for r in rows[:2]]},
                    "accuracy (%)", "Single-DARTS Table 1 (NAS-Bench-201, CIFAR-10)")
    common.write_table(args, run, NAME, "Single-DARTS Table 1: NAS-Bench-201", SOURCE,
                       ["method", "paper val (%)", "pynas supernet val (%)", "paper test (%)",
                        "pynas child test (%)"], rows,
                       ["pynas' validation column is the supernet's, not the benchmark's validation accuracy of the "
                        "derived cell."])
    return rows


if __name__ == "__main__":
    main()
