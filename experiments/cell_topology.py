"""Cell-topology paper (004): Fig. 1 (width and depth of popular NAS cells, `pynas analyze topology`) and Table 2 /
Fig. 9 (random variants of a cell's connections and operations, `pynas analyze variants`, trained with `pynas
train` beside the original). Training follows App. A.3 for the convergence study: 20 cells, batch 80, 600 epochs,
lr 0.025 cosine, no regularisation (no cutout, auxiliary head or drop-path).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "cell_topology"
SOURCE = ("Understanding Architectures Learnt by Cell-based NAS (Shu et al., ICLR 2020), Fig. 1 (normal cells' "
          "width and depth), Table 2 and Fig. 9 (random variants: narrower/deeper, lower accuracy)")
FIG1 = {"DARTS_V2": "3.5c, 3", "NASNet": "5c, 2", "AmoebaNet": "4c, 4", "SNAS_mild": "4c, 2"}
REAL_TRAIN = ["--batch-size", "80", "--cutout", "0", "--auxiliary-weight", "0", "--drop-path", "0"]


def add_arguments(parser):
    parser.add_argument("--base", default="DARTS_V2", help="the cell whose random variants are trained")
    parser.add_argument("--variants", type=int, default=None,
                        help="random variants of each kind (default: 13 as Fig. 9, 2 with --smoke)")


def width_depth(entry):
    return f"{entry['normal']['width']:g}c, {entry['normal']['depth']}"


def main(argv=None):
    args = common.parse_args(NAME, __doc__, add_arguments, argv=argv)
    run = common.Runner(args)
    n = args.variants or (2 if args.smoke else 13)
    tops = run.parallel(lambda g: (run.analyze("topology", run.path(f"topology-{g}"), "--genotype", g),
                                   common.read_json(run.path(f"topology-{g}", "topology.json")))[1], FIG1)
    rows = [{"part": "Fig. 1", "cell": g, "paper width, depth": FIG1[g], "pynas width, depth": width_depth(t)}
            for g, t in zip(FIG1, tops)]
    kinds = ("connections", "operations")
    for kind in kinds:
        run.analyze("variants", run.path(f"variants-{kind}"), "--genotype", args.base, "--kind", kind, "--n", n,
                    "--seed", 0)
    variants = {k: common.read_json(run.path(f"variants-{k}", "variants.json")) for k in kinds}
    cells = [("original", variants["connections"]["base"])]
    cells += [(f"{k} C{v['index']}", v) for k in kinds for v in variants[k]["variants"]]
    jobs = [(label, v, seed) for label, v in cells for seed in args.seeds]
    trained = run.parallel(lambda j: run.train(f"train-{j[0].replace(' ', '-')}-seed{j[2]}", j[1]["genotype"], j[2],
                                               real_extra=REAL_TRAIN), jobs)
    accs = {}
    for (label, _, _), r in zip(jobs, trained):
        accs.setdefault(label, []).append(100 * r["test_acc"])
    for label, v in cells:
        acc, sd = common.mean_std(accs[label])
        rows.append({"part": "Table 2 / Fig. 9", "cell": f"{args.base} {label}",
                     "paper width, depth": FIG1.get(args.base, "-") if label == "original" else
                     ("narrower or deeper (Table 2)" if label.startswith("connections") else "same topology"),
                     "pynas width, depth": width_depth(v), "pynas test acc (%)": common.pm(acc, sd),
                     "test_acc": acc, "genotype": v["genotype"]})
    var_rows = rows[len(FIG1):]
    common.bar_plot(os.path.join(args.out, "fig9_variants_accuracy.png"), [r["cell"] for r in var_rows],
                    {f"pynas ({args.mode})": [r["test_acc"] for r in var_rows]}, "test accuracy (%)",
                    "Cell-topology Fig. 9: original vs random variants")
    common.write_table(args, run, NAME, "Cell topology: width/depth and random variants", SOURCE,
                       ["part", "cell", "paper width, depth", "pynas width, depth", "pynas test acc (%)"], rows,
                       ["The paper's claim: popular cells are the widest and (nearly) shallowest in their space, and "
                        "converge faster and to better accuracy than their random variants (Fig. 3, 9).",
                        "Variants are pynas' own seeded draws (App. A.2), not the paper's C1-C13."])
    return rows


if __name__ == "__main__":
    main()
