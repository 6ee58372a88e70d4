"""Single-DARTS (002) Table 5 on NAS-Bench-201: DARTS (bi-level) and Single-DARTS (single level) under different
weight learning rates (0.001, 0.005, 0.025), relaxations (softmax, sigmoid, sigmoid with α = 0) and α optimisers
(SGD, Adam). Each configuration: one search, the derived cell trained with NB201's protocol.

Baselines as Sec. 5.3 describes them: SGD for α (momentum 0.9, lr 0.005; weight decay 3e-4 for DARTS, 0 under
sigmoid as Sec. 5.1.2), weight lr 0.005. The paper does not say whether "lr" also changes α's SGD learning rate;
here it is the weights' (`--w-lr`). Adam: lr 3e-4, betas (0.5, 0.999).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "single_darts_table5"
SOURCE = "Single-DARTS (Hou et al.), Table 5: NAS-Bench-201 CIFAR-10 / CIFAR-100 accuracy (%), 5 runs"
A_SGD = ["--a-optimizer", "sgd", "--a-lr", "0.005", "--a-momentum", "0.9"]
A_ADAM = ["--a-optimizer", "adam", "--a-lr", "3e-4", "--a-betas", "0.5", "0.999"]
BASE = {"DARTS": ("darts-cifar10", ["--space", "nb201", "--layers", "15", "--w-lr", "0.005", "--a-weight-decay",
                                    "3e-4"] + A_SGD),
        "Single-DARTS": ("single-darts-nb201", ["--w-lr", "0.005"] + A_SGD)}
# configuration -> options added to its method's baseline (argparse: the last value of an option wins)
CONFIGS = {"lr 0.001": ["--w-lr", "0.001"], "lr 0.005 / base": [], "lr 0.025": ["--w-lr", "0.025"],
           "softmax": ["--relaxation", "softmax"], "sigmoid": ["--relaxation", "sigmoid"],
           "sigmoid, α=0": ["--relaxation", "sigmoid", "--a-init", "zeros"], "Adam": A_ADAM}
# (method, row label, configuration, paper CIFAR-10, paper CIFAR-100): 002 Table 5 as printed (DARTS lr 0.025's
# CIFAR-100 value 54.30 is CIFAR-10's test accuracy of Table 1; typed as printed).
ROWS = [("DARTS", "lr 0.001", "lr 0.001", "91.54 ± 1.26", "68.21 ± 1.15"),
        ("DARTS", "lr 0.005", "lr 0.005 / base", "61.88 ± 10.72", "25.13 ± 13.47"),
        ("DARTS", "lr 0.025", "lr 0.025", "39.77 ± 0", "54.30 ± 0"),
        ("Single-DARTS", "lr 0.001", "lr 0.001", "94.36 ± 0", "73.51 ± 0"),
        ("Single-DARTS", "lr 0.005", "lr 0.005 / base", "94.36 ± 0", "73.51 ± 0"),
        ("Single-DARTS", "lr 0.025", "lr 0.025", "93.10 ± 0", "69.24 ± 0"),
        ("DARTS", "Softmax", "lr 0.005 / base", "61.88 ± 10.72", "25.13 ± 13.47"),
        ("DARTS", "Sigmoid", "sigmoid", "80.57 ± 0", "47.93 ± 0"),
        ("Single-DARTS", "Softmax", "softmax", "94.27 ± 0.13", "73.01 ± 0.71"),
        ("Single-DARTS", "Sigmoid", "lr 0.005 / base", "94.36 ± 0", "73.51 ± 0"),
        ("Single-DARTS", "Sigmoid* (α=0)", "sigmoid, α=0", "93.76 ± 0", "70.71 ± 0"),
        ("DARTS", "SGD", "lr 0.005 / base", "61.88 ± 10.72", "25.13 ± 13.47"),
        ("DARTS", "Adam", "Adam", "80.57 ± 0", "47.93 ± 0"),
        ("Single-DARTS", "SGD", "lr 0.005 / base", "94.36 ± 0", "73.51 ± 0"),
        ("Single-DARTS", "Adam", "Adam", "94.36 ± 0", "73.51 ± 0")]


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv=argv)
    run = common.Runner(args)
    configs = sorted({(m, c) for m, _, c, _, _ in ROWS})
    jobs = [(m, c, seed) for m, c in configs for seed in args.seeds]

    def slug(j):
        return f"{j[0]}-{''.join(ch if ch.isascii() and ch.isalnum() else '_' for ch in j[1])}-seed{j[2]}"

    dirs = dict(zip(jobs, run.parallel(lambda j: run.search(slug(j), BASE[j[0]][0], BASE[j[0]][1] + CONFIGS[j[1]],
                                                            j[2], ["--layers", "3"]), jobs)))
    genotypes = {j: common.read_text(os.path.join(dirs[j], "genotype.txt")) for j in jobs}
    trained = dict(zip(jobs, run.parallel(lambda j: run.train("train-" + slug(j), genotypes[j], j[2]), jobs)))
    column = "CIFAR100" if args.dataset == "cifar100" and not args.smoke else "CIFAR10"
    rows = []
    for m, label, c, p10, p100 in ROWS:
        js = [(m, c, seed) for seed in args.seeds]
        acc, sd = common.mean_std([100 * trained[j]["test_acc"] for j in js])
        rows.append({"method": m, "lr/act/opt": label, "configuration": c,
                     f"paper {column} (%)": p10 if column == "CIFAR10" else p100,
                     "pynas child test (%)": common.pm(acc, sd), "test_acc": acc,
                     "genotypes": [genotypes[j] for j in js]})
    common.bar_plot(os.path.join(args.out, f"{NAME}.png"), [f"{r['method']} {r['lr/act/opt']}" for r in rows],
                    {"paper": [float(r[f"paper {column} (%)"].split()[0]) for r in rows],
                     f"pynas ({args.mode})": [r["test_acc"] for r in rows]},
                    "accuracy (%)", "Single-DARTS Table 5 (NAS-Bench-201)")
    common.write_table(args, run, NAME, "Single-DARTS Table 5: learning rates, relaxations, optimisers", SOURCE,
                       ["method", "lr/act/opt", "configuration", f"paper {column} (%)", "pynas child test (%)"], rows,
                       ["Rows sharing a configuration (the baselines) share one search and one trained child.",
                        "The paper's claim: DARTS swings with lr, relaxation and optimiser; Single-DARTS stays "
                        "near 94 % on CIFAR-10 in every row."])
    return rows


if __name__ == "__main__":
    main()
