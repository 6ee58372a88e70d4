"""How much memory a search step takes, and the largest batch that fits a budget
(`pynas bench memory`, `pynas search --max-memory`).

Nothing is modelled by hand: the search's own model and strategy (as
:func:`~pynas.search.build.build_search` builds them) take two search steps at two
small batches, and each part is measured:

- parameters (weights, α, buffers), gradients and optimiser state (the weights'
  SGD momentum, α's Adam moments): the tensors themselves after the steps;
- activations: what one forward of the training loss keeps for backward
  (:func:`pynas.bench.search.saved_activations_mb`);
- the peak of the steps above the model, its optimisers and the batches: CUDA's
  max allocated, or on CPU the peak resident memory (VmHWM) of a fresh process
  (:func:`pynas.bench.search.measure_memory`'s measure), which also holds what
  no tensor accounts for (glibc's heap fragmentation, code paged in, oneDNN's
  buffers): on CPU that is what a budget is spent on.

The operations' lean forms are the run's (``--memory-saving``, on under
``--max-memory`` and ``--checkpoint-cells``, and here with ``--budget``), so an
estimate and the run it sizes keep the same tensors for backward.

"Workspace" is the peak's rest: the backward's gradients of activations and
temporaries, darts-2nd's copies of the weights, on CPU the allocator's share.
Two probe batches give each part a fixed share and a share per image (a
straight line; a step's memory is linear in the batch), and the line gives the
largest batch within a budget.

Hard samples (gdas, dsnas: one operation per edge) run fewer operations than a
soft step; which ones is random. The estimate takes the worst case: α is set so
that every edge draws the operation whose forward keeps the most activations
(tried for each); with one sample per image (``--sample-per sample``) every
operation runs somewhere in a large batch, so the step is measured with all of
them (the soft Gumbel relaxation). Every weight has its SGD momentum, as after
a search long enough to have drawn every operation.

On CPU the resident memory has a few MB of noise: when the peak grows less
between the probes than one forward's activations (a tiny network), the second
probe's batch is quadrupled (twice at most).
"""
import dataclasses
import gc
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..data import DATASET_INFO
from ..io import write_json
from ..search.budget import budget_bytes, format_bytes
from ..search.build import build_search
from ..search.config import RunConfig, add_search_arguments
from .search import _proc_status_mb, in_fresh_process, make_batches, saved_activations_mb

PROBE_BATCHES = (4, 8)
MORE_PROBES = 2  # times the second probe's batch is quadrupled when the two probes differ by less than noise
HARD_RELAXATIONS = ("gumbel_hard", "categorical")
# α of the forced operation above the others': a Gumbel draw exceeds 30 with probability e^-30.
FORCED_LOGIT = 30.0
PARTS = ("parameters", "batches", "gradients", "optimiser state", "activations", "workspace")


# -- one probe -------------------------------------------------------------------


def _tensor_bytes(tensors) -> int:
    """Bytes of the unique storages among ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if torch.is_tensor(t)}
    return sum(storages.values())


def force_operation(model, op: int) -> None:
    """Sets α so that every hard sample draws operation ``op`` (where an edge offers it)."""
    with torch.no_grad():
        for alpha in model.arch.alphas.values():
            alpha.zero_()
            alpha[..., op] = FORCED_LOGIT


def _build(config: dict, info: dict, batch_size: int, force_op: Optional[int]):
    cfg = RunConfig(**config)
    torch.manual_seed(cfg.seed)
    model, strategy = build_search(cfg, _Info(**info), steps_per_epoch=1000)
    # Steps with α's step: a weights-only warm-up (PC-DARTS) would hide it.
    strategy.warmup_epochs = 0
    if force_op is not None:
        force_operation(model, force_op)
    train, val = make_batches(batch_size, info["image_size"], cfg.device, seed=cfg.seed,
                              in_channels=info["in_channels"], num_classes=info["num_classes"])
    return model, strategy, train, val


@dataclass(frozen=True)
class _Info:
    """What the network needs of a dataset (:class:`pynas.data.DatasetInfo`'s fields)."""

    in_channels: int
    num_classes: int
    image_size: int


def probe(config: dict, info: dict, batch_size: int, force_op: Optional[int] = None, steps: int = 2,
          threads: Optional[int] = None) -> Dict[str, float]:
    """Bytes of each part of ``steps`` search steps of the run ``config`` (a
    RunConfig's fields) at ``batch_size``; ``growth`` is the peak above the model,
    its optimisers and the batches (on CPU the peak RSS: call it in a fresh process)."""
    if threads:
        torch.set_num_threads(threads)
    model, strategy, train, val = _build(config, info, batch_size, force_op)
    cuda = torch.device(config["device"]).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _proc_status_mb("VmRSS") * 2 ** 20
    if force_op is not None:
        _state_for_every_weight(strategy)
    for _ in range(steps):
        strategy.step(train, val)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _proc_status_mb("VmHWM") * 2 ** 20
    params = list(strategy.weights) + list(strategy.alphas)
    optimisers = [o for o in (strategy.w_opt, strategy.a_opt) if o is not None]
    y = train[1]
    activations = saved_activations_mb(model, lambda x: strategy.loss((x, y))[1], train) * 2 ** 20
    return {"growth": peak - baseline,
            "parameters": _tensor_bytes([*model.parameters(), *model.buffers()]),
            "batches": _tensor_bytes([*train, *(val if strategy.bilevel else ())]),
            "gradients": _tensor_bytes(p.grad for p in params),
            "optimiser state": _tensor_bytes(v for o in optimisers for s in o.state.values() for v in s.values()),
            "activations": activations}


def _state_for_every_weight(strategy) -> None:
    """Gives every weight its optimiser state (a step on zero gradients). A hard
    sample trains a few operations a step, but over a search every operation is
    drawn, and SGD keeps the momentum of each weight it ever stepped."""
    for w in strategy.weights:
        w.grad = torch.zeros_like(w)
    strategy.w_opt.step()
    strategy.w_opt.zero_grad(set_to_none=True)


def _probe(config: dict, info: dict, batch_size: int, force_op: Optional[int]) -> Dict[str, float]:
    """:func:`probe` in a fresh process on CPU (its own VmHWM), here on CUDA."""
    if torch.device(config["device"]).type != "cuda":
        spec = dict(config=config, info=info, batch_size=batch_size, force_op=force_op,
                    threads=torch.get_num_threads())
        return in_fresh_process("pynas.bench.memory", "probe", spec, f"the memory probe at batch {batch_size}")
    gc.collect()
    torch.cuda.empty_cache()
    try:
        return probe(config, info, batch_size, force_op)
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def heaviest_operation(config: dict, info: dict, batch_size: int) -> Tuple[int, str]:
    """The operation (index, name; not ``none``) whose forward keeps the most
    activations when every edge draws it."""
    model, strategy, train, _ = _build(config, info, batch_size, None)
    y = train[1]
    kept = {}
    for op, name in enumerate(model.arch.ops):
        if name != "none":
            force_operation(model, op)
            kept[op] = saved_activations_mb(model, lambda x: strategy.loss((x, y))[1], train)
    op = max(kept, key=kept.get)
    return op, model.arch.ops[op]


# -- the estimate -----------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes of each part of a search step: ``fixed[part] + per_image[part] · batch``."""

    fixed: Dict[str, float]
    per_image: Dict[str, float]
    device: str
    probe_batches: Tuple[int, int]
    assumption: str  # what the estimate assumes about hard samples ("" for soft methods)
    probes: list = dataclasses.field(default_factory=list)

    def peak(self, batch_size: int) -> float:
        """All the search step's memory at ``batch_size``: model, optimisers, batches and the step's peak."""
        return sum(self.fixed.values()) + batch_size * sum(self.per_image.values())

    def growth(self, batch_size: int) -> float:
        """The peak above the model and the batches (what :func:`pynas.bench.search.measure_memory` measures)."""
        return self.peak(batch_size) - sum(self.fixed[p] + batch_size * self.per_image[p]
                                           for p in ("parameters", "batches"))

    def largest_batch(self, budget: int, option: str = "--budget") -> int:
        """The largest batch whose :meth:`peak` fits ``budget`` bytes (a ValueError naming ``option`` if none does)."""
        fixed, per_image = sum(self.fixed.values()), sum(self.per_image.values())
        if budget < fixed + per_image:
            raise ValueError(f"{option} {format_bytes(budget)} is too small for a batch of one: the search needs "
                             f"{format_bytes(fixed)} fixed plus {format_bytes(per_image)} per image on {self.device}")
        return int((budget - fixed) // per_image)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fit(probes: Sequence[Dict[str, float]], batches: Tuple[int, int], part: str) -> Tuple[float, float]:
    """(fixed, per image) of the straight line through the two probes."""
    (b1, b2), (m1, m2) = batches, (probes[0][part], probes[1][part])
    slope = (m2 - m1) / (b2 - b1)
    return m1 - slope * b1, slope


def estimate(cfg, info, probe_batches: Tuple[int, int] = PROBE_BATCHES) -> MemoryEstimate:
    """The memory of the search ``cfg`` (a :class:`~pynas.search.config.RunConfig`) on
    data like ``info`` (in_channels, num_classes, image_size), from probes at two
    small batches. Leaves the random state as it was."""
    b1, b2 = probe_batches
    if not 1 <= b1 < b2:
        raise ValueError(f"--probe-batches must be two batch sizes 1 <= B1 < B2, got {b1} {b2}")
    cfg.validate()
    cfg = cfg.resolved()
    config = dataclasses.asdict(cfg)
    config["compile"] = False  # measured eager: torch.compile's memory is its own
    info = dict(in_channels=info.in_channels, num_classes=info.num_classes, image_size=info.image_size)
    devices = [torch.device(cfg.device)] if torch.device(cfg.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        force_op, assumption = None, ""
        if cfg.relaxation in HARD_RELAXATIONS:
            if cfg.sample_per == "sample":
                config["relaxation"] = "gumbel"
                assumption = "one sample per image: every operation runs (measured under the soft relaxation)"
            else:
                force_op, name = heaviest_operation(config, info, b1)
                assumption = f"hard samples: every edge draws {name}, the operation keeping the most activations"
        probes = [_probe(config, info, b, force_op) for b in probe_batches]
        # The step holds at least one forward's activations per image; a peak growing less than that
        # between the probes is the RSS's noise (a few MB) over a tiny network: the second probe grows.
        for _ in range(MORE_PROBES):
            if _fit(probes, probe_batches, "growth")[1] >= _fit(probes, probe_batches, "activations")[1]:
                break
            probe_batches = (b1, 4 * probe_batches[1])
            probes[1] = _probe(config, info, probe_batches[1], force_op)
    for p in probes:
        p["workspace"] = p["growth"] - p["gradients"] - p["optimiser state"] - p["activations"]
    fits = {part: _fit(probes, probe_batches, part) for part in PARTS}
    if fits["workspace"][1] < 0:  # still within the noise: no less than the activations per image
        fits["workspace"] = (fits["workspace"][0], 0.0)
        assumption = "; ".join(filter(None, [assumption, "the peak's growth per image was within the RSS's noise: "
                                                           "taken as the activations'"]))
    return MemoryEstimate(fixed={k: v[0] for k, v in fits.items()}, per_image={k: v[1] for k, v in fits.items()},
                          device=cfg.device, probe_batches=tuple(probe_batches), assumption=assumption, probes=probes)


def format_estimate(est: MemoryEstimate, budget: Optional[int] = None, option: str = "--budget") -> str:
    """The estimate as a table (MiB fixed and per image), and the largest batch within ``budget``."""
    what = "CUDA allocated bytes" if torch.device(est.device).type == "cuda" else "resident memory (RSS)"
    lines = [f"memory of one search step on {est.device} ({what}), from probes at batch "
             f"{est.probe_batches[0]} and {est.probe_batches[1]}" + (f"; {est.assumption}" if est.assumption else ""),
             f"{'part':<18}{'fixed MiB':>12}{'MiB / image':>14}"]
    for part in PARTS:
        lines.append(f"{part:<18}{est.fixed[part] / 2 ** 20:>12.2f}{est.per_image[part] / 2 ** 20:>14.4f}")
    lines.append(f"{'total':<18}{sum(est.fixed.values()) / 2 ** 20:>12.2f}"
                 f"{sum(est.per_image.values()) / 2 ** 20:>14.4f}")
    if budget is not None:
        batch = est.largest_batch(budget, option)
        lines.append(f"largest batch within {format_bytes(budget)}: {batch} "
                     f"(predicted peak {format_bytes(est.peak(batch))})")
    return "\n".join(lines)


# -- `pynas bench memory` --------------------------------------------------------------

def batch_within_budget(cfg, info, train_size: int) -> Tuple[int, str]:
    """``pynas search --max-memory``'s batch chooser (handed to :class:`~pynas.search.run.SearchRun`): the
    largest batch (at most the ``train_size`` training images) whose measured search step of ``cfg`` fits
    its budget, and the line that says how it was chosen."""
    budget = budget_bytes(cfg.max_memory, "--max-memory", cfg.device)
    est = estimate(cfg, info)
    fits = est.largest_batch(budget, "--max-memory")
    batch = min(fits, train_size)
    message = (f"--max-memory {cfg.max_memory} ({format_bytes(budget)} on {cfg.device}): batch {batch}"
               + (f" (the {train_size} training images; {fits} would fit)" if batch < fits else "")
               + f", predicted peak {format_bytes(est.peak(batch))} = {format_bytes(sum(est.fixed.values()))} + "
                 f"{format_bytes(sum(est.per_image.values()))} per image (measured at batch {est.probe_batches[0]} "
                 f"and {est.probe_batches[1]}" + (f"; {est.assumption}" if est.assumption else "") + ")"
               + ("; --batch-increase grows it beyond the budget later" if cfg.batch_increase else ""))
    return batch, message


# The options of `pynas search` that size its step (their names, choices and defaults are the search's).
SIZE_OPTIONS = ("space", "s1_from", "method", "relaxation", "sample_per", "constraint", "dataset", "C", "layers",
                "steps", "seed", "device", "amp", "channels_last", "checkpoint_cells", "memory_saving",
                "partial_channels")


def add_arguments(parser):
    import argparse

    search = argparse.ArgumentParser(add_help=False)
    add_search_arguments(search)
    for action in search._actions:
        if action.dest in SIZE_OPTIONS:
            parser._add_action(action)
    parser.add_argument("--image-size", type=int, default=None,
                        help="the images' height and width (default: the dataset's: digits 8, the others 32)")
    parser.add_argument("--budget", default=None, metavar="SIZE",
                        help="also the largest batch that fits SIZE (10GB, 512MiB; or a fraction of the GPU's "
                             "memory, e.g. 0.8, with --device cuda), measured with the memory-saving forms, as "
                             "`pynas search --max-memory SIZE` runs (default: %(default)s)")
    parser.add_argument("--probe-batches", type=int, nargs=2, default=list(PROBE_BATCHES), metavar=("B1", "B2"),
                        help="the two small batches measured (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the estimate as JSON (default: none)")


def run(args) -> int:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: getattr(args, k) for k in SIZE_OPTIONS if k in fields and hasattr(args, k)})
    budget = budget_bytes(args.budget, "--budget", cfg.device) if args.budget is not None else None
    if budget is not None and cfg.memory_saving is None:
        cfg.memory_saving = True  # what `pynas search --max-memory` runs, whose batch --budget predicts
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {args.image_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = DATASET_INFO[cfg.dataset]
    if args.image_size is not None:
        info = dataclasses.replace(info, image_size=args.image_size)
    est = estimate(cfg, info, tuple(args.probe_batches))
    print(f"{cfg.method} on --space {cfg.space}: C = {cfg.C}, {cfg.layers} cells, {cfg.steps} nodes, "
          f"{info.image_size}x{info.image_size}x{info.in_channels} images, {info.num_classes} classes"
          + (", bf16 autocast" if cfg.amp == "bf16" else "") + (", channels-last" if cfg.channels_last else "")
          + (", cells checkpointed" if getattr(cfg, "checkpoint_cells", False) else "")
          + (", memory-saving forms" if cfg.resolved().memory_saving else "")
          + (f", {torch.get_num_threads()} threads" if torch.device(cfg.device).type == "cpu" else ""))
    print(format_estimate(est, budget), flush=True)
    if args.json:
        result = dict(est.as_dict(), config=dataclasses.asdict(cfg), image_size=info.image_size, budget=budget,
                      largest_batch=est.largest_batch(budget) if budget is not None else None)
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
