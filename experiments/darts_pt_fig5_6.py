"""DARTS-PT (001) Fig. 5 and Fig. 6 on S2 and S4.

Fig. 5: the normal cells magnitude selection and PT derive from the same DARTS supernet: on S2 (skip_connect,
sep_conv_3x3) magnitude picks skip connections, PT convolutions; on S4 (noise, sep_conv_3x3) PT picks sep_conv_3x3
where α picks noise. Fig. 6: the supernet's validation accuracy after each round of the operation phase, PT vs
PT-Mag (progressive tuning with magnitude choice), on S2 (read from `pt_trail.json`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "darts_pt_fig5_6"
SOURCE = ("DARTS-PT (Wang et al., ICLR 2021), Fig. 5 (normal cells on S2, S4: magnitude vs PT) and Fig. 6 "
          "(validation accuracy per operation-selection round on S2, PT vs PT-Mag)")
# What each figure shows, typed from 001 Sec. 6.1-6.2 (the figures carry no printed numbers).
PAPER = {("S2", "magnitude"): "filled with skip_connect (Fig. 5)", ("S2", "pt"): "4 sep_conv_3x3 (Fig. 5)",
         ("S4", "magnitude"): "noise on several edges (Fig. 5)", ("S4", "pt"): "sep_conv_3x3 where α picks noise",
         ("S2", "pt-mag"): "below PT at every round (Fig. 6)"}


def trail_curve(select_dir):
    """(rounds, supernet validation accuracy after each round) of the operation phase."""
    trail = common.read_json(os.path.join(select_dir, "pt_trail.json"))
    last = {}
    for d in trail:
        if d.get("phase") == "operation" and d.get("val_acc_after_tuning") is not None:
            last[d["round"]] = d["val_acc_after_tuning"]
    rounds = sorted(last)
    return rounds, [last[r] for r in rounds]


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv=argv)
    run = common.Runner(args)
    supernets = [(sp, seed) for sp in ("s2", "s4") for seed in args.seeds]
    dirs = dict(zip(supernets, run.parallel(
        lambda t: run.search(f"{t[0]}-seed{t[1]}", f"darts-pt-{t[0]}", seed=t[1],
                             smoke_extra=["--steps", "4"] if t[0] == "s4" else ()), supernets)))  # see table3
    jobs = [(sp, sel, seed) for sp in ("s2", "s4") for sel in ("magnitude", "pt") for seed in args.seeds]
    jobs += [("s2", "pt-mag", seed) for seed in args.seeds]
    genotypes = dict(zip(jobs, run.parallel(lambda j: run.select(dirs[(j[0], j[2])], j[1]), jobs)))

    rows, curves = [], {}
    for sp, sel, seed in jobs:
        normal = common.genotype_ops(genotypes[(sp, sel, seed)], "normal")
        row = {"space": sp.upper(), "selection": sel, "seed": seed,
               "paper": PAPER[(sp.upper(), sel)],
               "normal sep_conv_3x3": sum(op == "sep_conv_3x3" for op, _ in normal),
               "normal skip_connect": sum(op == "skip_connect" for op, _ in normal),
               "normal noise": sum(op == "noise" for op, _ in normal),
               "genotype": genotypes[(sp, sel, seed)]}
        if sp == "s2" and sel in ("pt", "pt-mag"):
            rounds, accs = trail_curve(os.path.join(dirs[(sp, seed)], f"select-{sel}"))
            row["val_acc per round"] = " ".join(f"{a:.3f}" for a in accs)
            row["rounds"], row["val_acc_after_round"] = rounds, accs
            curves[f"DARTS+{'PT' if sel == 'pt' else 'PT-Mag'} seed {seed} ({args.mode})"] = (rounds, accs)
        rows.append(row)
    common.line_plot(os.path.join(args.out, "fig6_val_acc_per_round.png"), curves, "operation-selection round",
                     "supernet validation accuracy", "DARTS-PT Fig. 6 on S2: PT vs PT-Mag")
    common.write_table(args, run, NAME, "DARTS-PT Fig. 5 (cells on S2/S4) and Fig. 6 (PT vs PT-Mag on S2)", SOURCE,
                       ["space", "selection", "seed", "paper", "normal sep_conv_3x3", "normal skip_connect",
                        "normal noise", "val_acc per round"], rows,
                       ["Cell drawings: `<out>/<space>-seed<k>/cell-normal.png` (supernet) and the genotypes here; "
                        "the Fig. 6 curves: fig6_val_acc_per_round.png."])
    return rows


if __name__ == "__main__":
    main()
