"""The `pynas` command: `pynas search` (the main job), `select`, `evaluate`, `train`, `analyze` and `bench`."""
import argparse
import os
import sys

from .errors import InputError, run_command
from .progress import add_log_every_argument


def _search(args, argv=None):
    from .analysis.draw import draw_search_cells
    from .bench.memory import batch_within_budget
    from .search import distributed
    from .search.config import config_from_arguments
    from .search.run import SearchRun
    from .select.pt import op_by_perturbation

    if args.nproc > 1 and args.cuda_graphs:
        print("pynas search: --cuda-graphs runs in one process; drop --nproc (its all_reduce calls are not captured)",
              file=sys.stderr)
        return 2
    if args.nproc > 1 and not distributed.launched():
        return distributed.spawn(main, args.nproc, argv if argv is not None else sys.argv[1:], args.device)
    distributed.init_if_launched(args.device)
    search_argv = (argv if argv is not None else sys.argv[1:])[1:]
    try:
        cfg = config_from_arguments(args, search_argv)
        run = SearchRun(cfg, resume=args.resume, quiet=args.quiet, log_every=args.log_every,
                        choose_batch=batch_within_budget,
                        choose_op=op_by_perturbation, reporters=[draw_search_cells])
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:
        print(f"pynas search: {e}", file=sys.stderr)
        return 2
    genotype = run.run()
    if run.rank == 0:
        run.print_summary(genotype)
    distributed.finish()
    return 0


def _add_select_arguments(parser):
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a search run directory")
    parser.add_argument("--epoch", type=int, default=None,
                        help="the checkpoint the search kept after this epoch (--keep-every; default: the latest)")
    parser.add_argument("--method", choices=("magnitude", "snas", "threshold", "nb201", "pt", "pt-mag"), default="pt",
                        help="a rule on α (magnitude: DARTS' top-2; snas: child graph; threshold: FairDARTS' σ >= "
                             "--threshold; nb201: argmax per edge) or DARTS-PT's perturbation-based selection")
    parser.add_argument("--threshold", type=float, default=None,
                        help="--method threshold: the σ an edge's operation must reach (default: the run's, 0.85)")
    parser.add_argument("--crit", choices=("acc", "loss"), default="acc")
    parser.add_argument("--tune-epochs", type=int, default=5)
    parser.add_argument("--val-batches", type=int, default=None, help="validation batches per measurement (all)")
    parser.add_argument("--phases", default="operation,topology")
    parser.add_argument("--out", default=None, help="where to write (default: RUN_DIR/select-<method>)")
    parser.add_argument("--benchmark", default=None, metavar="PATH",
                        help="NAS-Bench-201 runs: the benchmark's numbers of the selected cell (PT: after each round, "
                             "in pt_trail.json); the benchmark's .pth, NATS-tss-v1_0-3ffb9.pickle.pbz2 or its -simple "
                             "directory")
    parser.add_argument("--quiet", action="store_true", help="no progress display, only the decisions")
    add_log_every_argument(parser)


def _select(args):
    from .io import load_checkpoint, write_json, write_text
    from .nb201_benchmark import canonical, numbers_line, open_benchmark
    from .progress import Progress
    from .search.build import kept_checkpoint, load_run
    from .select import PTSelection, select_by_rule
    from .select.pt import tuning_strategy

    try:
        cfg, model, train_data, val_data = load_run(args.run, args.epoch)
        if args.benchmark is not None and cfg.space != "nb201":
            raise InputError(f"--benchmark looks up NAS-Bench-201 cells; {args.run} searched --space {cfg.space}")
        bench = open_benchmark(args.benchmark) if args.benchmark is not None else None
        out = args.out or os.path.join(args.run, f"select-{args.method}")
        if args.threshold is not None and args.method != "threshold":
            raise InputError(f"--threshold applies to --method threshold, not {args.method}")
        if args.method == "threshold" and cfg.relaxation != "sigmoid":
            raise InputError(f"--method threshold keeps an edge whose σ(α) reaches the threshold (FairDARTS); "
                             f"{args.run} searched under {cfg.relaxation}, not sigmoid")
        if args.method in ("magnitude", "snas", "threshold", "nb201"):
            threshold = cfg.threshold if args.threshold is None else args.threshold
            genotype = select_by_rule(model, args.method, threshold=threshold)
        else:
            # α keeps training with the search's Adam state (DARTS-PT's code resumes the search's architect).
            checkpoint = (os.path.join(args.run, "checkpoint.pt") if args.epoch is None
                          else kept_checkpoint(args.run, args.epoch))
            search_state = load_checkpoint(checkpoint, "search", {"space": cfg.space, "method": cfg.method})
            pt = PTSelection(model, train_data, val_data, out, seed=cfg.seed, crit=args.crit,
                             tune_epochs=args.tune_epochs, val_batches=args.val_batches, batch_size=cfg.batch_size,
                             phases=[p for p in args.phases.split(",") if p], magnitude=args.method == "pt-mag",
                             fixed_alpha=cfg.method in ("fixed", "uniform"), device=cfg.device,
                             log=(lambda *a: None) if args.quiet else print,
                             strategy=tuning_strategy(cfg, image_size=train_data[0][0].shape[-1]),
                             arch_state=search_state["strategy"].get("a_opt"),
                             progress=Progress(quiet=args.quiet, log_every=args.log_every), benchmark=bench)
            if pt.resume():
                print(f"resuming: {len(pt.trail)} decisions already made")
            genotype = str(pt.run())
        write_text(os.path.join(out, "genotype.txt"), genotype + "\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"pynas select: {e}", file=sys.stderr)
        return 2
    print(f"genotype: {genotype}")
    if bench is not None:
        cell = canonical(genotype)
        numbers = dict(bench.lookup(cell) or {"missing": True, "file": bench.file}, cell=cell)
        write_json(os.path.join(out, "benchmark.json"), numbers)
        print(f"NAS-Bench-201 ({bench.file}): {numbers_line(numbers)}")
    return 0


def _evaluate(args):
    try:
        if args.random is not None:
            return _random_baseline(args)
        if args.run is None and not (args.genotype and args.benchmark):
            raise InputError("give --run RUN_DIR (a genotype in its supernet), or --genotype G --benchmark PATH "
                             "(NAS-Bench-201's numbers of a cell)")
        if args.run is not None:
            _evaluate_in_supernet(args)
        if args.benchmark is not None:
            _evaluate_on_benchmark(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"pynas evaluate: {e}", file=sys.stderr)
        return 2
    return 0


def _evaluate_in_supernet(args) -> None:
    from .search.build import evaluate, load_run
    from .select import genotype_in_place_of_alpha, parse_genotype

    cfg, model, _, val_data = load_run(args.run, args.epoch)
    genotype = parse_genotype(args.genotype or os.path.join(args.run, "genotype.txt"))
    _, supernet_acc = evaluate(model, val_data, cfg.batch_size, cfg.device)
    with genotype_in_place_of_alpha(model, genotype):
        _, child_acc = evaluate(model, val_data, cfg.batch_size, cfg.device)
    print(f"supernet validation accuracy: {supernet_acc:.4f}")
    print(f"child (supernet weights, no fine-tuning): {child_acc:.4f}")


def _evaluate_on_benchmark(args) -> None:
    """The benchmark's six numbers of --genotype (or the run's genotype), printed and, with --json, written."""
    from .genotype import NB201Genotype
    from .io import write_json
    from .nb201_benchmark import canonical, numbers_line, open_benchmark
    from .select import parse_genotype

    genotype = parse_genotype(args.genotype or os.path.join(args.run, "genotype.txt"))
    if not isinstance(genotype, NB201Genotype):
        raise InputError("--benchmark looks up NAS-Bench-201 cells; the genotype is a DARTS-space cell")
    bench = open_benchmark(args.benchmark)
    numbers = bench.lookup(genotype)
    cell = canonical(genotype)
    numbers = {"missing": True, "file": bench.file} if numbers is None else numbers
    print(f"NAS-Bench-201 ({bench.file}), {cell}: {numbers_line(dict(numbers, cell=cell))}")
    if args.json:
        write_json(args.json, dict(numbers, cell=cell))


def _random_baseline(args) -> int:
    """Random search read off the benchmark: the best of --random N cells by CIFAR-10 valid accuracy, for
    --seeds seeds, and the mean of their numbers."""
    from .io import write_json
    from .nb201_benchmark import METRICS, numbers_line, open_benchmark

    if args.benchmark is None or args.run is not None or args.genotype is not None:
        raise InputError("--random N draws cells from --benchmark PATH (without --run or --genotype)")
    if args.seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {args.seeds}")
    bench = open_benchmark(args.benchmark)
    best = []
    for seed in range(args.seeds):
        found = bench.random_search(args.random, seed)
        if found is None:
            raise InputError(f"none of the {args.random} cells drawn with seed {seed} has a CIFAR-10 valid "
                             f"accuracy in {bench.file}")
        cell, numbers = found
        best.append(dict(numbers, cell=cell, seed=seed))
        print(f"seed {seed}: {cell}: {numbers_line(numbers)}")
    mean = {key: sum(b[key] for b in best) / len(best) if all(b[key] is not None for b in best) else None
            for key in METRICS}
    print(f"random search, best of {args.random} by CIFAR-10 valid, mean over {args.seeds} seeds: "
          f"{numbers_line(mean)}")
    if args.json:
        write_json(args.json, {"file": bench.file, "random": args.random, "seeds": args.seeds, "best": best,
                               "mean": mean})
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
    parser.add_argument("--quiet", action="store_true", help="no progress display, only the epochs' summary lines")
    add_log_every_argument(parser)
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes making the batches (default: 0, the main one; the batches are the same "
                             "for any N)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help='also write each epoch\'s metrics as TensorBoard scalars into DIR '
                             '(pip install "pynas[tensorboard]")')
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
                      seed=args.seed, device=args.device, out=args.out, tensorboard=args.tensorboard,
                      workers=args.workers, **protocol)
    try:
        run = TrainRun(cfg, resume=args.resume, quiet=args.quiet, log_every=args.log_every)
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
    from . import doctor as doctor_module

    parser.add_argument("--version", action="version", version=doctor_module.version_string())
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run an architecture search (default: DARTS on the embedded digits)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from .search.config import add_search_arguments

    add_search_arguments(search)
    select = commands.add_parser("select", help="derive an architecture from a search run (rules or DARTS-PT)")
    _add_select_arguments(select)
    evaluate = commands.add_parser("evaluate", help="a genotype inside its supernet, with the supernet's weights; "
                                                    "NAS-Bench-201's recorded numbers of a cell")
    evaluate.add_argument("--run", default=None, metavar="RUN_DIR", help="a search run: the genotype in its supernet")
    evaluate.add_argument("--epoch", type=int, default=None,
                          help="the checkpoint the search kept after this epoch (--keep-every; default: the latest)")
    evaluate.add_argument("--genotype", default=None, help="name, file or text (default: the run's genotype)")
    evaluate.add_argument("--benchmark", default=None, metavar="PATH",
                          help="NAS-Bench-201's accuracies of the (NB201) genotype: the benchmark's .pth, NATS-Bench's "
                               "NATS-tss-v1_0-3ffb9.pickle.pbz2 or its -simple directory")
    evaluate.add_argument("--random", type=int, default=None, metavar="N",
                          help="with --benchmark alone: random search read off the table, the best of N random cells "
                               "by CIFAR-10 valid accuracy, per seed")
    evaluate.add_argument("--seeds", type=int, default=5, help="--random: seeds 0..SEEDS-1 (default: %(default)s)")
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the benchmark's numbers as JSON")
    train = commands.add_parser("train", help="train a genotype from scratch (DARTS evaluation protocol)")
    _add_train_arguments(train)
    analyze = commands.add_parser("analyze", help="analyses: per-edge cost, wiring evolution, cell topology, "
                                                  "random variants, loss landscape")
    from .analysis import cli as analysis_cli

    analysis_cli.add_arguments(analyze)
    doctor = commands.add_parser("doctor", help="versions, kernels built, GPUs, threads and a self-check of each "
                                               "op (for bug reports)")
    doctor_module.add_arguments(doctor)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager PyTorch")
    from .bench import cli as bench_module

    bench_module.add_arguments(bench)
    args = parser.parse_args(argv)

    def command() -> int:
        if args.command == "search":
            return _search(args, argv)
        if args.command == "select":
            _check_select_arguments(args)
            return _select(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "train":
            return _train(args)
        if args.command == "doctor":
            return doctor_module.run(args)
        if args.command == "analyze":
            return analysis_cli.run(args)
        return bench_module.run(args)

    # The error boundary: expected failures in one line (exit 2), Ctrl-C 130, bugs with their traceback.
    return run_command(f"pynas {args.command}", command, _interrupted_hint(args))


def _interrupted_hint(args) -> str:
    """What to run after a Ctrl-C that the command's own loop did not report."""
    resume = getattr(args, "resume", None)
    if args.command in ("search", "train") and resume:
        return f"; continue with `pynas {args.command} --resume {resume}`"
    if args.command == "select" and args.method in ("pt", "pt-mag"):
        return ("; every decision made so far is checkpointed: run the same command again to continue "
                "from the next one")
    return ""


def _check_select_arguments(args) -> None:
    """`pynas select`'s numeric options, checked before the run is loaded."""
    if args.tune_epochs < 0:
        raise InputError(f"--tune-epochs must be >= 0, got {args.tune_epochs}")
    if args.val_batches is not None and args.val_batches < 1:
        raise InputError(f"--val-batches must be at least 1 (each decision is measured on them), "
                         f"got {args.val_batches}")


if __name__ == "__main__":
    sys.exit(main())
