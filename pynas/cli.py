"""The `pynas` command: `pynas search` (the main job), `select`, `evaluate`, `train`, `analyze` and `bench`."""
import argparse
import os
import sys

from .errors import InputError, run_command
from .search.cost import ESTIMATORS
from .search.cost import PRESETS as COST_PRESETS


def _add_search_arguments(parser):
    from .arch import RELAXATIONS, SAMPLE_PER, SCHEDULE_KINDS
    from .data import DATASETS
    from .search.presets import PRESETS
    from .search.run import SPACES, RunConfig
    from .search.strategies import A_OPTIMIZERS, METHODS

    d = RunConfig()
    g = parser.add_argument_group("what to search")
    g.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="a paper's published search settings (docs/presets.md); --config and explicit options win")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="a run's config.json: repeats that run; explicit options win")
    g.add_argument("--space", choices=SPACES, default=d.space)
    g.add_argument("--method", choices=tuple(METHODS), default=d.method)
    g.add_argument("--relaxation", choices=RELAXATIONS, default=None,
                   help="override the method's relaxation (e.g. sigmoid for single-level)")
    g.add_argument("--s1-from", default=None, metavar="RUN_DIR",
                   help="for --space s1-from-run: a DARTS search whose top-2 operations per edge form the space")
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    g.add_argument("--data", default=None, metavar="DIR", help="dataset folder (cifar10, cifar100, svhn)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data")
    g.add_argument("--cutout", type=int, default=d.cutout, help="cutout length (0: off)")
    g.add_argument("--train-fraction", type=float, default=None,
                   help="share of the training set the weights train on, the rest is α's validation split "
                        "(default: 0.5 for bi-level methods, 1 for single-level ones)")
    g = parser.add_argument_group("supernet")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--max-memory", default=d.max_memory, metavar="SIZE",
                   help="choose the batch: the largest whose measured search step fits SIZE (10GB, 512MiB; or a "
                        "fraction of the GPU's memory, e.g. 0.8, with --device cuda); recorded as the run's "
                        "batch size (default: %(default)s: --batch-size)")
    g.add_argument("--C", type=int, default=d.C, help="initial channels")
    g.add_argument("--layers", type=int, default=d.layers, help="cells (NAS-Bench-201: 3 stages of layers/3 cells)")
    g.add_argument("--steps", type=int, default=d.steps, help="intermediate nodes per cell")
    g.add_argument("--seed", type=int, default=d.seed)
    g = parser.add_argument_group("weight optimiser (SGD, cosine annealing)")
    g.add_argument("--w-lr", type=float, default=d.w_lr)
    g.add_argument("--w-lr-min", type=float, default=None, help="default: 0.001; 0 for snas and dsnas")
    g.add_argument("--w-momentum", type=float, default=d.w_momentum)
    g.add_argument("--w-weight-decay", type=float, default=d.w_weight_decay)
    g.add_argument("--w-nesterov", action=argparse.BooleanOptionalAction, default=d.w_nesterov)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="weights' gradient norm clip")
    g = parser.add_argument_group("architecture optimiser")
    g.add_argument("--a-optimizer", choices=A_OPTIMIZERS, default=d.a_optimizer)
    g.add_argument("--a-lr", type=float, default=None,
                   help="default: 3e-4 (DARTS); 0.15 on the embedded digits (a short search: docs/fidelity.md)")
    g.add_argument("--a-betas", type=float, nargs=2, default=d.a_betas, metavar=("BETA1", "BETA2"), help="Adam")
    g.add_argument("--a-momentum", type=float, default=d.a_momentum, help="SGD")
    g.add_argument("--a-weight-decay", type=float, default=None, help="default: 1e-3; 0 under sigmoid")
    g.add_argument("--a-grad-clip", type=float, default=None, help="α's gradient norm clip (default: none)")
    g.add_argument("--a-init", default=None,
                   help="normal (1e-3 N(0,1)), zeros or a number (default: the method's; -ln 7 under sigmoid)")
    g = parser.add_argument_group("Gumbel sampling (snas, gdas, dsnas)")
    g.add_argument("--tau-start", type=float, default=None, help="default: the relaxation's (gumbel 1, gumbel_hard 10)")
    g.add_argument("--tau-end", type=float, default=None, help="default: the relaxation's (gumbel 0.03, gumbel_hard 0.1)")
    g.add_argument("--tau-schedule", choices=SCHEDULE_KINDS, default=None, help="default: the relaxation's")
    g.add_argument("--sample-per", choices=SAMPLE_PER, default=d.sample_per,
                   help="one sample per forward for all cells of a type, per cell, or per input sample")
    g = parser.add_argument_group("method options")
    g.add_argument("--constraint", choices=("none", *COST_PRESETS), default=d.constraint,
                   help="snas: resource constraint (docs/fidelity.md)")
    g.add_argument("--constraint-weight", type=float, default=None, help="snas: λ (default: the constraint's)")
    g.add_argument("--cost-estimator", choices=ESTIMATORS, default=d.cost_estimator)
    g.add_argument("--epsilon-alpha", type=float, default=d.epsilon_alpha,
                   help="sdarts-rs: the noise range reached at the end (ramped linearly from 0.03)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="weights-only epochs before α trains (sgas; pc-darts-cifar10: 15) (default: %(default)s)")
    g.add_argument("--first-decision", type=int, default=d.first_decision, help="sgas: epochs before the first decision")
    g.add_argument("--decision-freq", type=int, default=d.decision_freq, help="sgas: epochs between decisions")
    g.add_argument("--batch-increase", type=int, default=d.batch_increase, help="sgas: batch growth per decision")
    g.add_argument("--pt", dest="sgas_pt", action="store_true",
                   help="sgas: choose each decided edge's operation by perturbation (SGAS+PT)")
    g.add_argument("--pt-val-batches", type=int, default=None,
                   help="sgas --pt: validation batches per measurement (default: all)")
    g.add_argument("--partial-channels", type=int, default=d.partial_channels, metavar="K",
                   help="PC-DARTS: each edge's operations see 1/K of the channels (the rest bypass them) and β "
                        "normalises each node's edges; soft methods only, K divides --C (default: %(default)s)")
    g.add_argument("--log-grad-correlation", action="store_true",
                   help="log Single-DARTS' gradient correlation (Eq. 8) per node every epoch")
    g.add_argument("--log-prob-grad", default=None, metavar="CELLS",
                   help="log ∂L/∂p per edge and op of these cells every epoch (Single-DARTS Fig. 3): all, or 0,3")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default: runs/<space>-<method>-<dataset>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    g.add_argument("--keep-every", type=int, default=d.keep_every, metavar="N",
                   help="also keep the checkpoint of every N-th epoch (a search trajectory; 0: the latest only)")
    g.add_argument("--quiet", action="store_true", help="no progress line")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help='also write each epoch\'s metrics and α as TensorBoard scalars into DIR '
                        '(pip install "pynas[tensorboard]")')
    g.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    g.add_argument("--amp", choices=("none", "bf16"), default=d.amp, help="bf16 autocast")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the supernet")
    g.add_argument("--checkpoint-cells", action="store_true",
                   help="per-cell activation checkpointing: each cell is computed again in backward (about one "
                        "cell's activations kept instead of all; time reported by pynas bench search) "
                        "(default: %(default)s)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay the soft methods' whole step (α and weight steps, both optimisers) from a CUDA "
                        "graph, captured again each epoch (--device cuda; darts, darts-2nd, single-level, sdarts-rs, "
                        "fixed) (default: %(default)s)")
    g.add_argument("--overlap-reduction", action=argparse.BooleanOptionalAction, default=d.overlap_reduction,
                   help="data parallel: average the weights' gradients while backward runs (default: with "
                        "--device cuda; on CPU after backward, measured faster with gloo on shared cores)")
    g.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (or launch with torchrun)")
    for action in parser._actions:  # `--help` shows every default, also of options without a help text
        if action.help is None and action.option_strings:
            action.help = "(default: %(default)s)"


# Options of `pynas search` that are not part of a run's configuration.
_NOT_CONFIG = ("preset", "config", "resume", "quiet", "nproc", "command")


def _explicit_options(argv) -> set:
    """The destinations of the options given on the command line (not defaults)."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_search_arguments(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def search_config(args, argv) -> "RunConfig":
    """The run configuration: defaults < --preset < --config FILE < explicit options."""
    import dataclasses
    import json

    from .search.presets import PRESETS
    from .search.run import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {}
    if args.preset is not None:
        values.update(PRESETS[args.preset])
    if args.config is not None:
        try:
            with open(args.config) as f:
                loaded = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"--config {args.config}: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: not a run configuration (a JSON object)")
        unknown = sorted(set(loaded) - fields)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown keys {unknown}")
        loaded.pop("out", None)  # a repeated run gets its own directory
        values.update(loaded)
    explicit = _explicit_options(argv if argv is not None else sys.argv[2:])
    if {"max_memory", "batch_size"} <= explicit:
        raise ValueError("--max-memory chooses the batch size: give it or --batch-size, not both")
    if "max_memory" not in explicit:
        # A config file's batch was already chosen within its max_memory: it is repeated, not chosen again.
        values.pop("max_memory", None)
    values.update({k: getattr(args, k) for k in explicit if k in fields})
    if "a_betas" in values:
        values["a_betas"] = tuple(values["a_betas"])
    return RunConfig(**values)


def _search(args, argv=None):
    from .search import distributed
    from .search.run import SearchRun

    if args.nproc > 1 and args.cuda_graphs:
        print("pynas search: --cuda-graphs runs in one process; drop --nproc (its all_reduce calls are not captured)",
              file=sys.stderr)
        return 2
    if args.nproc > 1 and not distributed.launched():
        return distributed.spawn(args.nproc, argv if argv is not None else sys.argv[1:], args.device)
    distributed.init_if_launched(args.device)
    search_argv = (argv if argv is not None else sys.argv[1:])[1:]
    try:
        cfg = search_config(args, search_argv)
        run = SearchRun(cfg, resume=args.resume, quiet=args.quiet)
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
        cfg, model, train_data, val_data = load_run(args.run, args.epoch)
        if args.method in ("magnitude", "snas", "nb201"):
            genotype = select_by_rule(model, args.method)
            from .io import write_text

            out = args.out or os.path.join(args.run, f"select-{args.method}")
            write_text(os.path.join(out, "genotype.txt"), genotype + "\n")
        else:
            out = args.out or os.path.join(args.run, f"select-{args.method}")
            import torch

            from .select.pt import tuning_strategy

            # α keeps training with the search's Adam state (DARTS-PT's code resumes the search's architect).
            from .search.run import kept_checkpoint

            checkpoint = (os.path.join(args.run, "checkpoint.pt") if args.epoch is None
                          else kept_checkpoint(args.run, args.epoch))
            search_state = torch.load(checkpoint, weights_only=True, map_location="cpu")
            pt = PTSelection(model, train_data, val_data, out, seed=cfg.seed, crit=args.crit,
                             tune_epochs=args.tune_epochs, val_batches=args.val_batches, batch_size=cfg.batch_size,
                             phases=[p for p in args.phases.split(",") if p], magnitude=args.method == "pt-mag",
                             fixed_alpha=cfg.method in ("fixed", "uniform"), device=cfg.device,
                             log=(lambda *a: None) if args.quiet else print,
                             strategy=tuning_strategy(cfg.method, cfg.epsilon_alpha, cfg.seed + 2),
                             arch_state=search_state["strategy"].get("a_opt"))
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
        cfg, model, _, val_data = load_run(args.run, args.epoch)
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
                      seed=args.seed, device=args.device, out=args.out, tensorboard=args.tensorboard, **protocol)
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
    from . import doctor as doctor_module

    parser.add_argument("--version", action="version", version=doctor_module.version_string())
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run an architecture search (default: DARTS on the embedded digits)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_search_arguments(search)
    select = commands.add_parser("select", help="derive an architecture from a search run (rules or DARTS-PT)")
    _add_select_arguments(select)
    evaluate = commands.add_parser("evaluate", help="a genotype inside its supernet, with the supernet's weights")
    evaluate.add_argument("--run", required=True, metavar="RUN_DIR")
    evaluate.add_argument("--epoch", type=int, default=None,
                          help="the checkpoint the search kept after this epoch (--keep-every; default: the latest)")
    evaluate.add_argument("--genotype", default=None, help="name, file or text (default: the run's genotype)")
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
    from . import bench as bench_module

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
