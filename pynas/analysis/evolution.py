"""The wiring evolution of a search run (the wiring paper, Sec. 3, Fig. 1 and
3; SNAS Fig. 4), read from the run's ``metrics.jsonl``:

- per edge, the probability of each operation over the epochs (Fig. 3);
- per edge, the entropy of its distribution over the epochs (SNAS Fig. 4);
- the most likely cell of each epoch: per edge its argmax operation, edges
  whose argmax is `none` dropped (Fig. 1), drawn whenever it changes;
- a verdict on each pattern of Sec. 3: (P1) growth, edges dropped early that
  recover later; (P2) width preference, intermediate edges (between two
  intermediate nodes) staying dropped while input edges are kept; (P3) the
  bi-level failure, every edge dropped.

"Dropped" is soft (the paper's footnote 3): the most likely operation is `none`.
"""
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..io import write_json
from ..nn import DARTS, cell_edges, edge_name, get_space
from .draw import draw_cell, pyplot, save_figure

Edge = Tuple[int, int, str]


@dataclass
class History:
    """What a run's metrics record about α, epoch by epoch.

    ``probabilities[cell_type]``: ``[T, E, K]`` over ``epochs`` (T), the edges
    ``edges`` (source, target) and the operations ``ops``; nodes below
    ``inputs`` are the cell's inputs.
    """

    epochs: List[int]
    ops: Tuple[str, ...]
    edges: List[Tuple[int, int]]
    inputs: int
    probabilities: Dict[str, np.ndarray]
    # NAS-Bench-201 runs with --benchmark: per epoch the benchmark's numbers of its cell (None: not looked up)
    benchmark: List[Optional[dict]] = None

    @property
    def edge_names(self) -> List[str]:
        return [edge_name(s, t) for s, t in self.edges]

    @property
    def num_nodes(self) -> int:
        return self.edges[-1][1] + 1


def _space_ops(space: str) -> Tuple[str, ...]:
    if space in ("minimal", "s1", "s1-from-run"):  # the minimal cell and S1 keep DARTS' α columns
        return DARTS.ops
    return get_space(space).ops


def _cell_edges(num_edges: int, inputs: int) -> List[Tuple[int, int]]:
    """The (source, target) of each α row: the cell with ``num_edges`` edges."""
    steps = 1
    while len(cell_edges(steps, inputs)) < num_edges:
        steps += 1
    edges = cell_edges(steps, inputs)
    if len(edges) != num_edges:
        raise ValueError(f"{num_edges} edges per cell fit no cell of {inputs}-input nodes")
    return edges


def _read_records(path: str) -> List[dict]:
    """The per-epoch records holding α; a line cut short by a kill is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("arch"), dict) and record["arch"]:
                records.append(record)
    if not records:
        raise ValueError(f"{path} holds no per-epoch architecture records")
    return sorted(records, key=lambda r: r.get("epoch", 0))


def load_history(run_dir: str) -> History:
    """The α history of a search run directory (``config.json`` and
    ``metrics.jsonl``); ValueError, in one sentence, for anything else."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir} is not a directory")
    config, metrics = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(config):
        raise ValueError(f"{run_dir} is not a search run (no config.json)")
    if not os.path.exists(metrics):
        raise ValueError(f"{run_dir} has no metrics.jsonl yet (no finished epoch)")
    try:
        with open(config) as f:
            space = json.load(f).get("space")
    except (ValueError, AttributeError):  # not JSON, or not an object
        space = None
    if not isinstance(space, str):
        raise ValueError(f"{config} names no search space")
    ops = _space_ops(space)
    records = _read_records(metrics)
    cell_types = list(records[0]["arch"])
    try:
        probabilities = {t: np.array([r["arch"][t]["probabilities"] for r in records], dtype=float)
                         for t in cell_types}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{metrics}: the records disagree on cell types or α's shape ({e})")
    for t, p in probabilities.items():
        if p.ndim != 3 or p.shape[-1] != len(ops):
            raise ValueError(f"{metrics}: {t!r} probabilities of shape {p.shape[1:]} do not match the "
                             f"{len(ops)} operations of space {space!r}")
    inputs = 1 if space == "nb201" else 2  # NAS-Bench-201 cells have one input node
    edges = _cell_edges(probabilities[cell_types[0]].shape[1], inputs)
    return History([int(r.get("epoch", i + 1)) for i, r in enumerate(records)], ops, edges, inputs, probabilities,
                   [r.get("benchmark") if isinstance(r.get("benchmark"), dict) else None for r in records])


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """The entropy (nats) of each row's distribution, normalised first (sigmoid
    relaxations need not sum to 1); an all-zero row (a removed edge) has 0."""
    total = probabilities.sum(-1, keepdims=True)
    q = np.divide(probabilities, total, out=np.zeros_like(probabilities), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, -q * np.log(q), 0.0)
    return terms.sum(-1)


def dropped(history: History, cell_type: str) -> Optional[np.ndarray]:
    """``[T, E]``: whether the edge's most likely operation is `none` (Sec. 3's
    soft drop); None when the space has no `none`. Ties go to the first column."""
    if "none" not in history.ops:
        return None
    return history.probabilities[cell_type].argmax(-1) == history.ops.index("none")


def most_likely_cells(history: History, cell_type: str) -> List[List[Edge]]:
    """Per epoch, the cell with the largest probability: each edge with its
    argmax operation, edges whose argmax is `none` left out (Fig. 1)."""
    best = history.probabilities[cell_type].argmax(-1)
    return [[(s, t, history.ops[k]) for (s, t), k in zip(history.edges, row) if history.ops[k] != "none"]
            for row in best]


# ---------------------------------------------------------------------------
# Verdicts (Sec. 3)


def _recovered(history: History, cell_type: str) -> List[str]:
    """Edges dropped at some epoch and kept at the last: P1's growth."""
    d = dropped(history, cell_type)
    return [name for e, name in enumerate(history.edge_names) if d[:-1, e].any() and not d[-1, e]]


def _width(history: History, cell_type: str) -> Optional[str]:
    """P2: every intermediate edge dropped at the last epoch while an input edge is kept."""
    d = dropped(history, cell_type)[-1]
    intermediate = [e for e, (s, _) in enumerate(history.edges) if s >= history.inputs]
    kept_inputs = [e for e, (s, _) in enumerate(history.edges) if s < history.inputs and not d[e]]
    if not intermediate or not kept_inputs or not d[intermediate].all():
        return None
    names = ", ".join(history.edge_names[e] for e in intermediate)
    n_inputs = sum(1 for s, _ in history.edges if s < history.inputs)
    return f"{cell_type}: intermediate edges {names} dropped, {len(kept_inputs)} of {n_inputs} input edges kept"


def verdicts(history: History) -> List[dict]:
    """One verdict per pattern of Sec. 3, judged on the most likely cells:
    ``holds`` True/False (None where the space has no `none` to drop edges with),
    the cell types it holds for, and a one-line detail."""
    types = list(history.probabilities)
    if "none" not in history.ops:
        detail = "the space has no `none`: no edge can be dropped"
        return [dict(pattern=p, name=n, holds=None, cell_types=[], detail=detail)
                for p, n in (("P1", "growth"), ("P2", "width preference"), ("P3", "bi-level failure"))]
    growth = {t: _recovered(history, t) for t in types}
    growth = {t: names for t, names in growth.items() if names}
    width = {t: _width(history, t) for t in types}
    width = {t: text for t, text in width.items() if text}
    failed = [t for t in types if dropped(history, t)[-1].all()]
    return [
        dict(pattern="P1", name="growth", holds=bool(growth), cell_types=list(growth),
             detail="; ".join(f"{t}: {', '.join(names)} dropped (argmax none), then recovered by the last epoch"
                              for t, names in growth.items()) or "no edge recovered from a drop"),
        dict(pattern="P2", name="width preference", holds=bool(width), cell_types=list(width),
             detail="; ".join(width.values()) or "no cell keeps input edges while dropping every intermediate one"),
        dict(pattern="P3", name="bi-level failure", holds=bool(failed), cell_types=failed,
             detail=f"every edge of {', '.join(failed)} cells dropped at the last epoch" if failed
             else "some edge is kept at the last epoch"),
    ]


def verdict_line(verdict: dict) -> str:
    holds = {True: "yes", False: "no", None: "n/a"}[verdict["holds"]]
    return f"{verdict['pattern']} {verdict['name']}: {holds} ({verdict['detail']})"


# ---------------------------------------------------------------------------
# Figures


def plot_probabilities(history: History, cell_type: str, path: str) -> None:
    """Fig. 3: one panel per edge, the probability of each operation over the epochs."""
    plt = pyplot()
    p = history.probabilities[cell_type]
    E = p.shape[1]
    cols = min(E, 5)
    rows = math.ceil(E / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    for e, ax in enumerate(axes.flat):
        if e >= E:
            ax.set_axis_off()
            continue
        for k, op in enumerate(history.ops):
            ax.plot(history.epochs, p[:, e, k], label=op, lw=1.5, ls="--" if op == "none" else "-")
        ax.set_title(f"edge {e}: {history.edge_names[e]}", fontsize=9)
        ax.set_ylim(0, float(p.max()) * 1.05)  # scaled to the data: small moves stay visible
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 8), fontsize=8)
    fig.suptitle(f"{cell_type} cells: operation probabilities per edge")
    save_figure(fig, path)


def plot_entropy(history: History, path: str) -> None:
    """SNAS Fig. 4: per cell type, the entropy of each edge's distribution over the epochs."""
    plt = pyplot()
    types = list(history.probabilities)
    fig, axes = plt.subplots(1, len(types), figsize=(5.0 * len(types), 3.6), squeeze=False, layout="constrained")
    for ax, t in zip(axes[0], types):
        h = entropy(history.probabilities[t])
        for e, name in enumerate(history.edge_names):
            ax.plot(history.epochs, h[:, e], label=name, lw=1.2)
        ax.axhline(math.log(len(history.ops)), color="gray", ls=":", lw=1, label="log K (uniform)")
        ax.set_title(f"{t} cells", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("entropy (nats)")
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_benchmark(history: History, path: str) -> bool:
    """NAS-Bench-201's recorded test accuracies of each epoch's cell (a search with --benchmark), per
    dataset; a cell the file lacks leaves a gap. False (nothing drawn) when no epoch was looked up."""
    if not any(b and not b.get("missing") for b in history.benchmark or []):
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    for key, label in (("cifar10_test", "CIFAR-10 test"), ("cifar100_test", "CIFAR-100 test"),
                       ("imagenet16_test", "ImageNet16-120 test")):
        values = [np.nan if not b or b.get("missing") or b.get(key) is None else b[key] for b in history.benchmark]
        ax.plot(history.epochs, values, marker="o", ms=3, lw=1.5, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy of the epoch's cell (%)")
    ax.set_title(f"NAS-Bench-201 ({next(b['file'] for b in history.benchmark if b)})", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


# ---------------------------------------------------------------------------
# The report and `pynas analyze evolution`


def analyze_evolution(run_dir: str, out_dir: str) -> dict:
    """Writes ``evolution.json`` (curves, entropies, the most likely cells,
    verdicts) and the figures to ``out_dir``; returns what it wrote to the JSON."""
    history = load_history(run_dir)
    os.makedirs(out_dir, exist_ok=True)
    report = {"run": run_dir, "epochs": history.epochs, "ops": list(history.ops), "edges": history.edge_names,
              "cell_types": {}, "verdicts": verdicts(history), "figures": []}

    def figure(name):
        report["figures"].append(name)
        return os.path.join(out_dir, name)

    for t, p in history.probabilities.items():
        plot_probabilities(history, t, figure(f"evolution_{t}_probabilities.png"))
        cells = most_likely_cells(history, t)
        report["cell_types"][t] = {
            "probabilities": p.tolist(), "entropy": entropy(p).tolist(),
            "most_likely": [{"epoch": epoch, "edges": [list(edge) for edge in cell]}
                            for epoch, cell in zip(history.epochs, cells)],
        }
        concat = [] if history.inputs == 1 else None  # NAS-Bench-201's last node is the output itself
        for i, (epoch, cell) in enumerate(zip(history.epochs, cells)):
            if i == 0 or cell != cells[i - 1]:  # one diagram per change of the most likely cell
                draw_cell(cell, figure(f"cell_{t}_epoch{epoch:03d}.png"), title=f"{t} cell, epoch {epoch}",
                          inputs=history.inputs, num_nodes=history.num_nodes, concat=concat, ops=history.ops)
    plot_entropy(history, figure("evolution_entropy.png"))
    if plot_benchmark(history, os.path.join(out_dir, "evolution_benchmark.png")):
        report["figures"].append("evolution_benchmark.png")
        report["benchmark"] = history.benchmark
    write_json(os.path.join(out_dir, "evolution.json"), report)
    return report


def evolution_command(args) -> int:
    """``pynas analyze evolution``: prints one verdict per pattern."""
    try:
        report = analyze_evolution(args.run, args.out)
    except (ValueError, OSError) as e:
        print(f"pynas analyze evolution: {e}", file=sys.stderr)
        return 2
    for verdict in report["verdicts"]:
        print(verdict_line(verdict))
    print(f"wrote {os.path.join(args.out, 'evolution.json')} and {len(report['figures'])} figures")
    return 0


def register_commands(subparsers) -> None:
    """Adds ``evolution`` to ``subparsers`` (wired as ``pynas analyze evolution``)."""
    p = subparsers.add_parser(
        "evolution", help="the wiring evolution of a search run (wiring paper Sec. 3)",
        description="From a run's metrics.jsonl: per-edge operation probabilities and entropies over the "
                    "epochs, the most likely cell of each epoch, and a verdict on growth (P1), width "
                    "preference (P2) and the bi-level failure (P3).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=evolution_command)
