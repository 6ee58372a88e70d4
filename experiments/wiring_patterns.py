"""Wiring-evolution paper (000): the patterns P1-P3 (Sec. 3, Fig. 3) on the minimal cell (Fig. 2) and Fig. 4 (mean
cost of every operation on every edge at initialisation vs after θ is trained under uniform sampling).

P1 (growth) and P2 (width preference): DSNAS, single level (preset wiring-dsnas-minimal); P3 (bi-level failure):
first-order DARTS (preset wiring-darts-minimal); verdicts from `pynas analyze evolution`. Fig. 4: `pynas analyze
cost --init` against `pynas analyze cost --run` of a `pynas search --method uniform` run (α fixed, θ trained),
`--compare` drawing both.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "wiring_patterns"
SOURCE = ("Understanding the wiring evolution in differentiable NAS (Xie et al., AISTATS 2021), Sec. 3 (P1-P3, "
          "Fig. 3) and Fig. 4 (mean cost per operation and edge: (a) initialisation, (b) θ trained)")
# pattern -> (run, what the paper reports)
PATTERNS = {"P1": ("dsnas", "holds: edges drop first, some recover (single level)"),
            "P2": ("dsnas", "holds: intermediate edges barely recover"),
            "P3": ("darts", "holds: no edge recovers (bi-level)")}
PRESETS = {"dsnas": "wiring-dsnas-minimal", "darts": "wiring-darts-minimal"}
SMOKE_EPOCHS = ["--epochs", "2"]  # two epochs: evolution needs a trajectory


def positive_share(cost):
    """Share of sampled (edge, op != none) pairs whose mean cost is > 0, over all cells and in the last cell."""
    none = cost["ops"].index("none") if "none" in cost["ops"] else None

    def share(cells):
        pos = tot = 0
        for cell in cells:
            for counts, means in zip(cell["count"], cell["mean"]):
                for k, (n, m) in enumerate(zip(counts, means)):
                    if k != none and n:
                        tot += 1
                        pos += m > 0
        return pos / tot if tot else None

    return share(cost["cells"]), share(cost["cells"][-1:])


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv=argv)
    run = common.Runner(args)
    searches = [(k, seed) for k in PRESETS for seed in args.seeds]
    searches += [("uniform", seed) for seed in args.seeds]
    dirs = dict(zip(searches, run.parallel(
        lambda j: run.search(f"{j[0]}-seed{j[1]}", PRESETS.get(j[0], "wiring-dsnas-minimal"),
                             ["--method", "uniform"] if j[0] == "uniform" else [], j[1], SMOKE_EPOCHS), searches)))
    evo = [j for j in searches if j[0] != "uniform"]
    run.parallel(lambda j: run.analyze("evolution", dirs[j] + "-evolution", "--run", dirs[j]), evo)
    verdicts = {j: {v["pattern"]: v for v in common.read_json(
        os.path.join(dirs[j] + "-evolution", "evolution.json"))["verdicts"]} for j in evo}
    smoke_cost = ["--samples", "4", "--batch-size", "256"] if args.smoke else []
    size = (["--C", "2", "--layers", "3", "--dataset", "digits"] if args.smoke else
            ["--dataset", args.dataset, "--data", args.data])

    def cost(seed):
        init = run.path(f"cost-init-seed{seed}")
        run.analyze("cost", init, "--init", "--space", "minimal", "--seed", seed, *size, *smoke_cost)
        trained = run.path(f"cost-trained-seed{seed}")
        run.analyze("cost", trained, "--run", dirs[("uniform", seed)], "--compare",
                    os.path.join(init, "cost.json"), *smoke_cost)
        return (positive_share(common.read_json(os.path.join(init, "cost.json"))),
                positive_share(common.read_json(os.path.join(trained, "cost.json"))))

    costs = dict(zip(args.seeds, run.parallel(cost, args.seeds)))
    rows = []
    for p, (k, paper) in PATTERNS.items():
        vs = [verdicts[(k, seed)][p] for seed in args.seeds]
        rows.append({"experiment": f"{p} ({PRESETS[k]})", "paper": paper,
                     "pynas": f"holds in {sum(v['holds'] for v in vs)} of {len(vs)} seeds",
                     "detail": "; ".join(v["detail"] for v in vs), "holds": [v["holds"] for v in vs]})
    for when, idx, paper in (("initialisation", 0, "cost > 0 for every op but none (Fig. 4a)"),
                             ("θ trained, α fixed (uniform)", 1, "most costs < 0 (Fig. 4b)")):
        all_cells = [costs[s][idx][0] for s in args.seeds]
        last = [costs[s][idx][1] for s in args.seeds]
        rows.append({"experiment": f"Fig. 4: cost at {when}", "paper": paper,
                     "pynas": f"{100 * common.mean_std(all_cells)[0]:.0f} % of sampled (edge, op) pairs positive "
                              f"(last cell: {100 * common.mean_std(last)[0]:.0f} %)",
                     "positive_share": all_cells, "positive_share_last_cell": last})
    common.bar_plot(os.path.join(args.out, "fig4_positive_cost_share.png"), ["initialisation", "θ trained"],
                    {f"pynas ({args.mode}), all cells": [rows[3]["positive_share"][0], rows[4]["positive_share"][0]],
                     f"pynas ({args.mode}), last cell": [rows[3]["positive_share_last_cell"][0],
                                                         rows[4]["positive_share_last_cell"][0]]},
                    "share of (edge, op) with mean cost > 0", "Wiring paper Fig. 4 (paper: ~1 at init, low after)")
    common.write_table(args, run, NAME, "Wiring evolution: P1-P3 and Fig. 4", SOURCE,
                       ["experiment", "paper", "pynas", "detail"], rows,
                       ["Heat maps as Fig. 4: <out>/cost-init-seed<k>/ and cost-trained-seed<k>/ "
                        "(cost_compare_cell*.png); probability curves as Fig. 3: <out>/<run>-evolution/.",
                        "pynas' minimal-cell network keeps DARTS' two reduction cells (docs/fidelity.md)."])
    return rows


if __name__ == "__main__":
    main()
