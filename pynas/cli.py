"""The `pynas` command: `pynas search` (the main job), `select`, `evaluate`, `train`, `analyze` and `bench`."""
import argparse
import os
import sys


def _add_search_arguments(parser):
    from .search.run import SPACES, RunConfig
    from .search.strategies import METHODS
    from .data import DATASETS

    d = RunConfig()
    parser.add_argument("--space", choices=SPACES, default=d.space)
    parser.add_argument("--method", choices=tuple(METHODS), default=d.method)
    parser.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    parser.add_argument("--data", default=None, metavar="DIR", help="dataset folder (cifar10, cifar100, svhn)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data")
    parser.add_argument("--cutout", type=int, default=0, help="cutout length (0: off)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--C", type=int, default=d.C, help="initial channels")
    parser.add_argument("--layers", type=int, default=d.layers, help="cells")
    parser.add_argument("--steps", type=int, default=d.steps, help="intermediate nodes per cell")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--w-lr", type=float, default=d.w_lr)
    parser.add_argument("--a-lr", type=float, default=d.a_lr)
    parser.add_argument("--constraint", default=d.constraint, help="SNAS resource constraint: none, mild, moderate, aggressive")
    parser.add_argument("--cost-estimator", default=d.cost_estimator, help="reparameterised, analytic or policy")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<space>-<method>-<dataset>-<time>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    parser.add_argument("--s1-from", default=None, metavar="RUN_DIR",
                        help="for --space s1: a DARTS search run whose top-2 operations per edge form S1")
    parser.add_argument("--relaxation", default=None, help="override the method's relaxation (e.g. sigmoid)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="published settings; explicit options still win")
    parser.add_argument("--amp", choices=("none", "bf16"), default=d.amp, help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the supernet")
    parser.add_argument("--epsilon-alpha", type=float, default=d.epsilon_alpha,
                        help="sdarts-rs: the noise range reached at the end (ramped linearly from 0.03)")
    parser.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="sgas: weights-only epochs")
    parser.add_argument("--decision-freq", type=int, default=d.decision_freq, help="sgas: epochs between decisions")
    parser.add_argument("--pt", dest="sgas_pt", action="store_true",
                        help="sgas: choose each decided edge's operation by perturbation (SGAS+PT)")
    parser.add_argument("--pt-val-batches", type=int, default=None,
                        help="sgas --pt: validation batches per measurement (all)")
    parser.add_argument("--log-grad-correlation", action="store_true",
                        help="log Single-DARTS' gradient correlation (Eq. 8) per node every epoch")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel processes on this machine (or launch with torchrun)")


# Published settings by name (explicit command-line options override them).
PRESETS = {
    # Single-DARTS on NAS-Bench-201 (002 App. B): 50 epochs, batch 64, SGD lr 0.005, Adam 3e-4.
    "single-darts-nb201": dict(space="nb201", method="single-level", epochs=50, batch_size=64, w_lr=0.005,
                               a_lr=3e-4),
    # DARTS' CIFAR-10 search: C = 16, 8 cells, 50 epochs, batch 64.
    "darts-cifar10": dict(space="darts", method="darts", dataset="cifar10", epochs=50, batch_size=64, C=16,
                          layers=8),
}


def _apply_preset(args, argv):
    if args.preset is None:
        return
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
    for key, value in PRESETS[args.preset].items():
        if key not in given:
            setattr(args, key, value)


def _search(args, argv=None):
    from .search import distributed
    from .search.run import RunConfig, SearchRun

    if args.nproc > 1 and not distributed.launched():
        return distributed.spawn(args.nproc, argv if argv is not None else sys.argv[1:], args.device)
    distributed.init_if_launched(args.device)
    _apply_preset(args, argv)
    cfg = RunConfig(space=args.space, method=args.method, dataset=args.dataset, epochs=args.epochs,
                    batch_size=args.batch_size, C=args.C, layers=args.layers, steps=args.steps, seed=args.seed,
                    out=args.out, data=args.data, download=args.download, cutout=args.cutout, w_lr=args.w_lr, a_lr=args.a_lr, constraint=args.constraint,
                    cost_estimator=args.cost_estimator, device=args.device, relaxation=args.relaxation,
                    amp=args.amp, channels_last=args.channels_last, compile=args.compile, s1_from=args.s1_from,
                    epsilon_alpha=args.epsilon_alpha, warmup_epochs=args.warmup_epochs,
                    decision_freq=args.decision_freq, sgas_pt=args.sgas_pt, pt_val_batches=args.pt_val_batches,
                    log_grad_correlation=args.log_grad_correlation)
    try:
        run = SearchRun(cfg, resume=args.resume, quiet=args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"pynas search: {e}", file=sys.stderr)
        return 2
    genotype = run.run()
    if run.rank == 0:
        print(f"genotype: {genotype}")
        print(f"run directory: {run.out}")
    distributed.finish()
    return 0


def _add_select_arguments(parser):
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a search run directory")
    parser.add_argument("--method", choices=("magnitude", "snas", "nb201", "pt", "pt-mag"), default="pt")
    parser.add_argument("--crit", choices=("acc", "loss"), default="acc")
    parser.add_argument("--tune-epochs", type=int, default=5)
    parser.add_argument("--val-batches", type=int, default=None, help="validation batches per measurement (all)")
    parser.add_argument("--phases", default="operation,topology")
    parser.add_argument("--out", default=None, help="where to write (default: RUN_DIR/select-<method>)")
    parser.add_argument("--quiet", action="store_true")


def _select(args):
    from .search.run import load_run
    from .select import PTSelection, select_by_rule

    try:
        cfg, model, train_data, val_data = load_run(args.run)
        if args.method in ("magnitude", "snas", "nb201"):
            genotype = select_by_rule(model, args.method)
        else:
            out = args.out or os.path.join(args.run, f"select-{args.method}")
            pt = PTSelection(model, train_data, val_data, out, seed=cfg.seed, crit=args.crit,
                             tune_epochs=args.tune_epochs, val_batches=args.val_batches, batch_size=cfg.batch_size,
                             phases=[p for p in args.phases.split(",") if p], magnitude=args.method == "pt-mag",
                             fixed_alpha=cfg.method == "fixed", device=cfg.device,
                             log=(lambda *a: None) if args.quiet else print)
            if pt.resume():
                print(f"resuming: {len(pt.trail)} decisions already made")
            genotype = str(pt.run())
            with open(os.path.join(out, "genotype.txt"), "w") as f:
                f.write(genotype + "\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"pynas select: {e}", file=sys.stderr)
        return 2
    print(f"genotype: {genotype}")
    return 0


def _evaluate(args):
    from .search.run import evaluate, load_run
    from .select import genotype_in_place_of_alpha, parse_genotype

    try:
        cfg, model, _, val_data = load_run(args.run)
        genotype = parse_genotype(args.genotype or os.path.join(args.run, "genotype.txt"))
        _, supernet_acc = evaluate(model, val_data, cfg.batch_size, cfg.device)
        with genotype_in_place_of_alpha(model, genotype):
            _, child_acc = evaluate(model, val_data, cfg.batch_size, cfg.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"pynas evaluate: {e}", file=sys.stderr)
        return 2
    print(f"supernet validation accuracy: {supernet_acc:.4f}")
    print(f"child (supernet weights, no fine-tuning): {child_acc:.4f}")
    return 0


def _add_train_arguments(parser):
    from .data import DATASETS
    from .train import DARTS_PROTOCOL

    parser.add_argument("--genotype", default="DARTS_V2",
                        help="a name (DARTS_V2, ...), a file, or a genotype's text (NAS-Bench-201 strings too)")
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--data", default=None, metavar="DIR", help="dataset folder (cifar10, cifar100, svhn)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=None, help="run directory (default: runs/train-<dataset>-<time>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    # Unset values come from the protocol (DARTS' for CIFAR/SVHN, NAS-Bench-201's for its genotypes).
    kinds = {"nesterov": None}
    for name, value in DARTS_PROTOCOL.items():
        flag = "--" + name.replace("_", "-")
        if name in kinds:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=type(value), default=None, help=f"(DARTS protocol: {value})")


def _train(args):
    from .train import DARTS_PROTOCOL, TrainConfig, TrainRun

    protocol = {name: getattr(args, name) for name in DARTS_PROTOCOL}
    cfg = TrainConfig(genotype=args.genotype, dataset=args.dataset, data=args.data, download=args.download,
                      seed=args.seed, device=args.device, out=args.out, **protocol)
    try:
        run = TrainRun(cfg, resume=args.resume, quiet=args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"pynas train: {e}", file=sys.stderr)
        return 2
    result = run.run()
    print(f"parameters: {result['params_M']:.3f} M  FLOPs: {result['flops_M']:.2f} M  "
          f"test accuracy: {result['test_acc']:.4f}")
    print(f"run directory: {run.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pynas", description="Differentiable NAS with fused kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run an architecture search (default: DARTS on the embedded digits)")
    _add_search_arguments(search)
    select = commands.add_parser("select", help="derive an architecture from a search run (rules or DARTS-PT)")
    _add_select_arguments(select)
    evaluate = commands.add_parser("evaluate", help="a genotype inside its supernet, with the supernet's weights")
    evaluate.add_argument("--run", required=True, metavar="RUN_DIR")
    evaluate.add_argument("--genotype", default=None, help="name, file or text (default: the run's genotype)")
    train = commands.add_parser("train", help="train a genotype from scratch (DARTS evaluation protocol)")
    _add_train_arguments(train)
    analyze = commands.add_parser("analyze", help="analyses: per-edge cost, wiring evolution, cell topology, "
                                                  "random variants, loss landscape")
    from .analysis import cli as analysis_cli

    analysis_cli.add_arguments(analyze)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager PyTorch")
    from . import bench as bench_module

    bench_module.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "search":
        return _search(args, argv)
    if args.command == "select":
        return _select(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "train":
        return _train(args)
    if args.command == "analyze":
        return analysis_cli.run(args)
    return bench_module.run(args)


if __name__ == "__main__":
    sys.exit(main())
