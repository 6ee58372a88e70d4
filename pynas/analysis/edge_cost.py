"""Per-edge costs of a supernet and their Monte Carlo statistics (the wiring
paper, "Understanding the wiring evolution in differentiable NAS", Sec. 4-5).

Every differentiable NAS method minimises, on each edge (i, j), the local cost
of Eq. 4-5::

    C(Z_ij) = Σ_{b,c,h,w} ∂L/∂X_j^i ⊙ X_j^i,      X_j^i = Σ_k w_k · op_k(x_i),

the edge's output X_j^i against the loss gradient it receives. A SearchCell
never materialises X_j^i (a node's edges share one ``mixed_sum``), but X_j^i
enters its node as a plain sum, so ∂L/∂X_j^i = ∂L/∂node and the cost splits into
per-operation terms ``w_k · Σ ∂L/∂node ⊙ op_k(x_i)``: one fused ``edge_cost`` per
node in a gradient hook gives them all in the backward pass (see
``SearchCell.cost_recorder``). `none` outputs zeros, so its cost is 0.

- :func:`collect_edge_costs`: the costs of every edge of every cell in one
  backward pass, under soft or hard (one-hot) weights.
- :func:`monte_carlo_cost`: Sec. 5.1's estimator: θ and α fixed, subnetworks
  sampled uniformly (one operation per edge, `none` included), streaming count,
  mean and variance of each sampled operation's cost per (cell, edge, op).
- :func:`plot_cost` / :func:`plot_cost_comparison`: Fig. 4's heat maps (edges
  × operations) of the mean cost, and "at initialisation" against "after
  training θ with α fixed".
- :func:`register_commands`: ``pynas analyze cost``.
"""
import contextlib
import json
import math
import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..arch import EdgeWeights
from ..data import loader
from ..functional import edge_cost
from ..io import write_json
from ..nn import SearchNetwork, forward_with_weights
from ..progress import Progress, add_log_every_argument
from .draw import pyplot, save_figure


# ---------------------------------------------------------------------------
# One backward pass


class CostRecorder:
    """While entered, every SearchCell of ``model`` hands its per-(edge, op)
    costs to this recorder, which sums them into ``costs[cell]`` (``[L, E, K]``
    float64, L cells)."""

    def __init__(self, model: SearchNetwork):
        self.cells = list(model.cells)
        self._index = {id(cell): i for i, cell in enumerate(self.cells)}
        E, K = model.arch.num_edges, len(model.arch.ops)
        self.costs = torch.zeros(len(self.cells), E, K, dtype=torch.float64, device=_device(model))

    def __call__(self, cell, costs: torch.Tensor) -> None:
        self.costs[self._index[id(cell)]] += costs

    def __enter__(self) -> "CostRecorder":
        for cell in self.cells:
            cell.cost_recorder = self
        return self

    def __exit__(self, *exc) -> None:
        for cell in self.cells:
            cell.cost_recorder = None


@dataclass
class PassCosts:
    """The costs of one forward/backward pass.

    ``cells[l, e, k]`` is ``w_k · Σ ∂L/∂X ⊙ op_k(x)`` on edge e of cell l (zero
    for operations not run); the cost of the edge (Eq. 5) is its sum over k.
    ``logit_cost`` is ``Σ ∂L/∂Y ⊙ Y`` at the logits Y, which Thm. 2 (Eq. 8-9)
    equates with ``loss − entropy`` (L_θ − H_θ, both batch means).
    """

    loss: float
    entropy: float
    logit_cost: float
    cells: torch.Tensor

    @property
    def edges(self) -> torch.Tensor:
        """``[L, E]``: the cost of each edge, C(Z_ij) of Eq. 5."""
        return self.cells.sum(-1)


def collect_edge_costs(model: SearchNetwork, x: torch.Tensor, y: torch.Tensor,
                       cell_weights: Optional[Sequence[EdgeWeights]] = None) -> PassCosts:
    """The cost of every (cell, edge, op) for one batch, in one backward pass.

    The weights are the model's own relaxation (soft, or one-hot samples for
    ``gumbel_hard``/``categorical``), or ``cell_weights``, one per cell. Only
    activation gradients are computed: θ and α receive none. L is the mean
    cross-entropy of the batch (Eq. 3). BatchNorm runs in the model's mode.
    """
    x = x.detach().requires_grad_(True)  # the gradient is taken w.r.t. the input: every node lies on its path
    logit_costs = []
    with CostRecorder(model) as recorder:
        logits = model(x) if cell_weights is None else forward_with_weights(model, x, cell_weights)
        detached = logits.detach()
        logits.register_hook(lambda grad: logit_costs.append(edge_cost(grad, [detached])))
        loss = F.cross_entropy(logits, y.to(logits.device))
        torch.autograd.grad(loss, [x])
    log_p = F.log_softmax(detached.double(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    return PassCosts(float(loss.detach()), float(entropy), float(logit_costs[0]), recorder.costs)


# ---------------------------------------------------------------------------
# Monte Carlo statistics (Sec. 5.1)


class RunningStats:
    """Streaming count, mean and variance of values arriving per element of a
    fixed shape (Welford's update, float64), each element updated only where
    ``present`` is True."""

    def __init__(self, shape: Tuple[int, ...], device=None):
        self.count = torch.zeros(shape, dtype=torch.float64, device=device)
        self.mean = torch.zeros_like(self.count)
        self.m2 = torch.zeros_like(self.count)

    def update(self, values: torch.Tensor, present: Optional[torch.Tensor] = None) -> None:
        values = values.to(self.mean)
        present = torch.ones_like(self.count) if present is None else present.to(self.mean)
        self.count += present
        delta = (values - self.mean) * present
        self.mean += delta / self.count.clamp_min(1)
        self.m2 += delta * (values - self.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance (n − 1 in the denominator); NaN below two values."""
        return torch.where(self.count > 1, self.m2 / (self.count - 1).clamp_min(1), torch.full_like(self.m2, math.nan))


def uniform_sample(mask: torch.Tensor, generator: torch.Generator, dtype=torch.float32,
                   device=None) -> Tuple[EdgeWeights, torch.Tensor]:
    """One operation per edge, uniformly among those ``mask`` (``[E, K]``)
    allows, `none` included: one-hot weights with only that operation run.
    Returns the weights and the chosen column per edge (-1 where the mask
    leaves an edge nothing)."""
    alive = mask.any(-1)
    choice = torch.full((mask.size(0),), -1, dtype=torch.long)
    if bool(alive.any()):
        choice[alive] = torch.multinomial(mask[alive].double().cpu(), 1, generator=generator).squeeze(-1)
    weights = torch.zeros(mask.shape, dtype=dtype)
    weights[alive, choice[alive]] = 1.0
    active = [[k] if k >= 0 else [] for k in choice.tolist()]
    return EdgeWeights(weights.to(device), active), choice


@dataclass
class MonteCarloCost:
    """The estimator's statistics and stored samples.

    ``stats``: per (cell, edge, op), over the passes that sampled that op;
    ``totals``: per cell, the sum over its edges of the sampled ops' costs
    (Cor. 1.2: ≈ 0 in every cell but the last); ``loss``, ``entropy``,
    ``logit_cost``: per pass (Thm. 2: logit_cost = loss − entropy);
    ``chosen``/``sampled``: ``[N, L, E]`` the op sampled on each edge and its cost.
    """

    ops: Tuple[str, ...]
    edges: List[str]
    cell_types: List[str]
    stats: RunningStats
    totals: RunningStats
    loss: RunningStats
    entropy: RunningStats
    logit_cost: RunningStats
    chosen: List[torch.Tensor] = field(default_factory=list)
    sampled: List[torch.Tensor] = field(default_factory=list)

    def to_json(self) -> dict:
        def numbers(t):
            return _json_numbers(t.cpu().tolist())

        def summary(s):
            return {"mean": numbers(s.mean), "variance": numbers(s.variance)}

        return {
            "ops": list(self.ops), "edges": self.edges, "samples": len(self.chosen),
            "cells": [{"index": i, "type": t, "count": numbers(self.stats.count[i].long()),
                       "mean": numbers(self.stats.mean[i]), "variance": numbers(self.stats.variance[i]),
                       "total": {"mean": numbers(self.totals.mean[i]), "variance": numbers(self.totals.variance[i])}}
                      for i, t in enumerate(self.cell_types)],
            "loss": summary(self.loss), "entropy": summary(self.entropy), "logit_cost": summary(self.logit_cost),
            "sampled": {"op": numbers(torch.stack(self.chosen)) if self.chosen else [],
                        "cost": numbers(torch.stack(self.sampled)) if self.sampled else []},
        }


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module):
    """Training-mode BatchNorm as in the search (Thm. 1's scale invariance is
    that of batch statistics), with every buffer restored on exit: the model
    leaves the estimate as it came (θ fixed, running statistics included)."""
    was_training = model.training
    saved = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        model.train(was_training)


SAMPLE_PER = ("type", "cell")


def monte_carlo_cost(model: SearchNetwork, data, samples: int, batch_size: int = 64, seed: int = 0,
                     per: str = "type", progress: Optional[Progress] = None) -> MonteCarloCost:
    """Sec. 5.1's Monte Carlo estimate of the cost of every operation on every
    edge of every cell: for ``samples`` batches of ``data`` (cycled, reshuffled
    per pass over it), a subnetwork is sampled uniformly (one op per edge among
    those the mask allows, `none` included) and the cost of each sampled op is
    stored; θ and α are never updated. ``per="type"``: one sample per cell type,
    shared by all cells of that type, as the wiring paper's analysis code does
    (α is shared the same way); ``per="cell"``: each cell draws its own. ``progress`` shows the samples
    (:class:`~pynas.progress.Progress`; none by default)."""
    if samples < 1:
        raise ValueError(f"monte_carlo_cost: `samples` must be at least 1, got {samples}")
    if per not in SAMPLE_PER:
        raise ValueError(f"monte_carlo_cost: `per` must be one of {SAMPLE_PER}, got {per!r}")
    device, dtype = _device(model), next(model.parameters()).dtype
    types = ["reduce" if cell.reduction else "normal" for cell in model.cells]
    masks = [model.arch.mask(t).cpu() for t in types]
    L, (E, K) = len(types), masks[0].shape
    generator = torch.Generator().manual_seed(seed)
    result = MonteCarloCost(tuple(model.arch.ops), list(model.cells[0].edge_names), types,
                            RunningStats((L, E, K), device), RunningStats((L,), device),
                            *(RunningStats((), device) for _ in range(3)))
    with batch_statistics(model), (progress or Progress(quiet=True)).epoch("sampling", samples) as bar:
        for x, y in _batches(data, batch_size, seed, samples):
            if per == "type":  # drawn in the order the cells first use each type
                by_type = {}
                for t, m in zip(types, masks):
                    if t not in by_type:
                        by_type[t] = uniform_sample(m, generator, dtype, device)
                drawn = [by_type[t] for t in types]
            else:
                drawn = [uniform_sample(m, generator, dtype, device) for m in masks]
            chosen = torch.stack([c for _, c in drawn]).to(device)
            costs = collect_edge_costs(model, x.to(device=device, dtype=dtype), y, [w for w, _ in drawn])
            picked = costs.cells.gather(-1, chosen.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # none: 0, never run
            present = F.one_hot(chosen.clamp_min(0), K).bool() & (chosen >= 0).unsqueeze(-1)
            result.stats.update(picked.unsqueeze(-1).expand(L, E, K), present)
            result.totals.update(costs.cells.sum((-1, -2)))
            for name in ("loss", "entropy", "logit_cost"):
                getattr(result, name).update(torch.tensor(getattr(costs, name), dtype=torch.float64))
            result.chosen.append(chosen.cpu())
            result.sampled.append(picked.cpu())
            bar.update(len(y), loss=costs.loss)
    return result


def _batches(data, batch_size: int, seed: int, n: int):
    """``n`` batches, passing over ``data`` again (in a new order) as needed."""
    epoch = 0
    while True:
        for batch in loader(data, batch_size, seed, epoch):
            yield batch
            n -= 1
            if n == 0:
                return
        epoch += 1


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _json_numbers(values):
    """NaN (an undefined variance) as JSON null."""
    if isinstance(values, list):
        return [_json_numbers(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


# ---------------------------------------------------------------------------
# Heat maps (Fig. 4)


def _cost_matrix(cell: dict):
    """A cell's mean cost ``[E, K]``, NaN where an operation was never sampled."""
    import numpy as np

    mean = np.array(cell["mean"], dtype=float)
    mean[np.array(cell["count"]) == 0] = np.nan
    return mean


def _heatmap(ax, matrix, ops, edges, title, limit):
    import numpy as np

    plt = pyplot()
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgray")  # grey: never sampled (or unavailable)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(ops)), labels=[f"{k}: {op}" for k, op in enumerate(ops)], rotation=45, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(edges)), labels=edges, fontsize=8)
    ax.set_xlabel("operation")
    ax.set_ylabel("edge")
    ax.set_title(title, fontsize=10)
    return image


def _limit(*matrices) -> float:
    """A colour range symmetric about 0: the sign of a cost is what selects `none`."""
    import numpy as np

    values = np.concatenate([np.abs(m[np.isfinite(m)]) for m in matrices] + [np.zeros(1)])
    return float(values.max()) or 1.0


def plot_cost(result: dict, out_dir: str) -> List[str]:
    """``cost_cell<k>.png`` per cell: the mean cost of each op (x) on each edge
    (y), as Fig. 4; blue is negative (the op is preferred to `none`), red positive."""
    paths = []
    for cell in result["cells"]:
        plt = pyplot()
        matrix = _cost_matrix(cell)
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(result["ops"]), 1.5 + 0.35 * len(result["edges"])))
        image = _heatmap(ax, matrix, result["ops"], result["edges"],
                         f"mean cost, cell {cell['index']} ({cell['type']})", _limit(matrix))
        fig.colorbar(image, ax=ax)
        path = os.path.join(out_dir, f"cost_cell{cell['index']}.png")
        save_figure(fig, path)
        paths.append(path)
    return paths


def check_comparable(result: dict, other: dict) -> None:
    """Raises ValueError unless the two estimates cover the same cells, edges and ops."""
    def shape(r):
        return r["ops"], r["edges"], [c["type"] for c in r["cells"]]

    if shape(result) != shape(other):
        raise ValueError("the two cost estimates differ in operations, edges or cells; compare runs of one network")


def plot_cost_comparison(result: dict, other: dict, out_dir: str, labels: Tuple[str, str]) -> List[str]:
    """``cost_compare_cell<k>.png`` per cell: ``other``'s mean cost (A), this
    one's (B), and their difference B − A, e.g. at initialisation against after
    training θ with α fixed (Fig. 4 (a) and (b))."""
    check_comparable(result, other)
    paths = []
    for cell, other_cell in zip(result["cells"], other["cells"]):
        plt = pyplot()
        a, b = _cost_matrix(other_cell), _cost_matrix(cell)
        fig, axes = plt.subplots(1, 3, figsize=(3.0 + 1.6 * len(result["ops"]), 1.8 + 0.35 * len(result["edges"])),
                                 layout="constrained")
        limit = _limit(a, b)
        panels = ((a, f"A: {labels[0]}", limit), (b, f"B: {labels[1]}", limit), (b - a, "B − A", _limit(b - a)))
        for ax, (matrix, title, lim) in zip(axes, panels):
            fig.colorbar(_heatmap(ax, matrix, result["ops"], result["edges"], title, lim), ax=ax)
        fig.suptitle(f"mean cost, cell {cell['index']} ({cell['type']})")
        path = os.path.join(out_dir, f"cost_compare_cell{cell['index']}.png")
        save_figure(fig, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
# pynas analyze cost


class _Unusable(Exception):
    """An input the command cannot use: reported in one line, exit code 2."""


def _read_run_config(run_dir: str):
    from ..search.config import RunConfig

    if not os.path.isdir(run_dir):
        raise _Unusable(f"{run_dir} is not a directory")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise _Unusable(f"{run_dir} is not a search run (no config.json)")
    try:
        with open(path) as f:
            return RunConfig(**json.load(f))
    except (ValueError, TypeError) as e:
        raise _Unusable(f"{path} is not a search run's config: {e}")


def _network(cfg, run_dir: Optional[str], epoch: Optional[int] = None):
    """(model, train split, validation split) of a run configuration: the
    weights of ``run_dir``'s checkpoint (the latest, or the one kept after
    ``epoch``), or at initialisation (None), seeded as a run starts."""
    from ..search.build import build_model, load_run, search_data

    if run_dir is not None:
        _, model, train_data, val_data = load_run(run_dir, epoch)
        return model, train_data, val_data
    cfg.validate()
    train_data, val_data, info = search_data(cfg)
    torch.manual_seed(cfg.seed)
    return build_model(cfg, info).to(cfg.device), train_data, val_data


def _source(args):
    """The network to estimate, its data and a description for cost.json."""
    from ..search.config import RunConfig

    if args.run is not None:
        cfg = _read_run_config(args.run)
        if not args.init and not os.path.exists(os.path.join(args.run, "checkpoint.pt")):
            raise _Unusable(f"{args.run} has no checkpoint.pt yet (no finished epoch); use --init for its "
                            f"network at initialisation")
        source = {"run": args.run, "at": "initialisation" if args.init else "checkpoint",
                  "epoch": None if args.init else args.epoch}
    elif args.init:
        cfg = RunConfig(space=args.space, C=args.C, layers=args.layers, seed=args.seed, dataset=args.dataset,
                        data=args.data)
        source = {"run": None, "at": "initialisation"}
    else:
        raise _Unusable("give --run RUN_DIR (its checkpoint) or --init (a network at initialisation)")
    try:
        model, train_data, val_data = _network(cfg, None if args.init else args.run, args.epoch)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise _Unusable(f"cannot load {args.run or 'the network'}: {e}")
    if not isinstance(model, SearchNetwork):
        raise _Unusable(f"per-edge costs need a DARTS-style supernet (SearchNetwork); space {cfg.space!r} is not one")
    source.update(space=cfg.space, method=cfg.method, dataset=cfg.dataset, C=cfg.C, layers=cfg.layers,
                  seed=cfg.seed)
    return model, train_data if args.split == "train" else val_data, source


def _read_cost_json(path: str) -> dict:
    try:
        with open(path) as f:
            other = json.load(f)
        if not {"ops", "edges", "cells"} <= set(other):
            raise ValueError("not a cost.json")
        return other
    except (OSError, ValueError) as e:
        raise _Unusable(f"--compare {path}: {e}")


def _summary(payload: dict) -> str:
    def mean_sd(s):
        sd = math.sqrt(s["variance"]) if s["variance"] is not None else math.nan
        return f"{s['mean']:+.4g} ± {sd:.2g}"

    ops = payload["ops"]
    lines = [f"Monte Carlo cost over {payload['samples']} uniformly sampled subnetworks ({payload['source']['at']})",
             f"loss L {mean_sd(payload['loss'])}, entropy H {mean_sd(payload['entropy'])}, "
             f"cost at the logits {mean_sd(payload['logit_cost'])} (= L - H, Thm. 2)",
             "total: a cell's summed edge costs (Cor. 1.2: about 0 in every cell but the last, but for "
             "skip_connect on intermediate edges, App. D); "
             "positive: the sampled (edge, op) pairs, `none` aside, whose mean cost is > 0 (they favour `none`)",
             f"{'cell':>4}  {'type':<6}  {'total, mean ± sd':<22}  positive"]
    for cell in payload["cells"]:
        pairs = [(m, c, ops[k]) for row_m, row_c in zip(cell["mean"], cell["count"])
                 for k, (m, c) in enumerate(zip(row_m, row_c))]
        sampled = [m for m, c, op in pairs if c > 0 and op != "none"]
        positive = sum(1 for m in sampled if m > 0)
        lines.append(f"{cell['index']:>4}  {cell['type']:<6}  {mean_sd(cell['total']):<22}  "
                     f"{positive} of {len(sampled)}")
    return "\n".join(lines)


def cost_command(args) -> int:
    """``pynas analyze cost``: writes ``cost.json`` and ``cost_cell<k>.png``
    (and ``cost_compare_cell<k>.png`` with ``--compare``) to ``--out``."""
    try:
        if args.samples < 1 or args.batch_size < 1:
            raise _Unusable("--samples and --batch-size must be at least 1")
        progress = Progress(quiet=args.quiet, log_every=args.log_every)
        other = _read_cost_json(args.compare) if args.compare else None
        model, data, source = _source(args)
        payload = monte_carlo_cost(model, data, args.samples, args.batch_size, args.seed, args.sample_per,
                                   progress).to_json()
        payload["sample_per"] = args.sample_per
        payload["source"] = dict(source, split=args.split, batch_size=args.batch_size, sampling_seed=args.seed)
        if other is not None:
            try:
                check_comparable(payload, other)
            except ValueError as e:
                raise _Unusable(f"--compare {args.compare}: {e}")
    except _Unusable as e:
        print(f"pynas analyze cost: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "cost.json"), payload)
    plot_cost(payload, args.out)
    if other is not None:
        labels = (_label(other, os.path.dirname(os.path.abspath(args.compare))), _label(payload, args.out))
        plot_cost_comparison(payload, other, args.out, labels)
    print(_summary(payload))
    print(f"wrote {os.path.join(args.out, 'cost.json')} and {len(payload['cells'])} heat maps")
    return 0


def _label(payload: dict, out_dir: str) -> str:
    """E.g. "checkpoint of run-3" or "initialisation (init-out)": what the estimate is of."""
    source = payload.get("source", {})
    if source.get("run"):
        return f"{source.get('at', '?')} of {os.path.basename(os.path.normpath(source['run']))}"
    return f"{source.get('at', '?')} ({os.path.basename(os.path.normpath(out_dir))})"


def register_commands(subparsers) -> None:
    """Adds ``cost`` to ``subparsers`` (wired as ``pynas analyze cost``)."""
    p = subparsers.add_parser(
        "cost", help="Monte Carlo estimate of the per-edge cost (wiring paper Sec. 5.1, Fig. 4)",
        description="Samples subnetworks uniformly (one operation per edge, none included) with θ and α fixed "
                    "and estimates the mean and variance of the cost Σ ∂L/∂X ⊙ X (Eq. 5) of every operation on "
                    "every edge of every cell. Writes cost.json and a heat map per cell.")
    p.add_argument("--run", metavar="RUN_DIR", help="a search run: its checkpoint's weights (with --init: its "
                   "network at initialisation, seeded as the run started)")
    p.add_argument("--epoch", type=int, default=None,
                   help="with --run: the checkpoint the search kept after this epoch (--keep-every)")
    p.add_argument("--init", action="store_true", help="weights at initialisation")
    p.add_argument("--space", choices=("minimal", "darts"), default="minimal", help="with --init alone")
    p.add_argument("--C", type=int, default=8, help="with --init alone: initial channels")
    p.add_argument("--layers", type=int, default=5, help="with --init alone: cells")
    p.add_argument("--dataset", default="digits", help="with --init alone")
    p.add_argument("--data", default=None, help="with --init alone: the dataset's directory")
    p.add_argument("--samples", type=int, default=100, help="sampled subnetworks, one batch each")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split", choices=("train", "val"), default="train",
                   help="the data the cost is taken on (val: the held-out search set of bi-level methods)")
    p.add_argument("--sample-per", choices=SAMPLE_PER, default="type",
                   help="one uniform sample per cell type, shared by its cells (the analysis code), or per cell")
    p.add_argument("--seed", type=int, default=0, help="sampling and data order (and, with --init alone, weights)")
    p.add_argument("--compare", metavar="OTHER.json", help="another cost.json: adds side-by-side and difference maps")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    add_log_every_argument(p)
    p.set_defaults(func=cost_command)

