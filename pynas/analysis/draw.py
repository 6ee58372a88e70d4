"""Figures of the analyses: a cell diagram (the wiring paper's Fig. 1 and 2:
input nodes and the output node blue, intermediate nodes orange, one arrow per
kept edge labelled with its operation), and the helpers every plot uses.

Graphviz draws the diagram when its ``dot`` binary is installed; otherwise a
plain matplotlib drawing does.
"""
import os
import shutil
import subprocess
from typing import Optional, Sequence, Tuple

from .._optional import require
from ..genotype import Genotype, NB201Genotype
from ..io import atomic_write
from ..nn import NB201Network

Edge = Tuple[int, int, str]  # (source node, target node, operation)

INPUT_COLOUR, INTERMEDIATE_COLOUR = "#9ecae1", "#fdae6b"
OP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf")  # matplotlib's tab10


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    matplotlib = require("matplotlib", needed_for="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """Writes ``fig`` as a PNG atomically and frees it."""
    plt = pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def draw_cell(edges: Sequence[Edge], path: str, title: str = "", inputs: int = 2,
              num_nodes: Optional[int] = None, concat: Optional[Sequence[int]] = None,
              ops: Optional[Sequence[str]] = None) -> None:
    """A PNG diagram of one cell.

    Args:
        edges: the kept edges ``(source, target, op)``; nodes ``0..inputs-1`` are
            the cell inputs, the others intermediate nodes.
        inputs: the number of input nodes (2 in DARTS cells, 1 in NAS-Bench-201's).
        num_nodes: input plus intermediate nodes (default: enough for ``edges``),
            so a node every edge of which was dropped still appears.
        concat: the nodes concatenated into the output node (default: every
            intermediate node, as in Fig. 2); ``[]`` draws no output node.
        ops: the space's operations, which fix each one's colour (so a series
            of diagrams agrees); default: the ones in ``edges``, sorted.
    """
    num_nodes = max([inputs - 1] + [max(s, t) for s, t, _ in edges]) + 1 if num_nodes is None else num_nodes
    concat = list(range(inputs, num_nodes)) if concat is None else list(concat)
    ops = sorted({op for _, _, op in edges}) if ops is None else list(ops)
    colours = {op: OP_COLOURS[i % len(OP_COLOURS)] for i, op in enumerate(ops)}
    if shutil.which("dot") and _draw_with_graphviz(edges, path, title, inputs, num_nodes, concat, colours):
        return
    _draw_with_matplotlib(edges, path, title, inputs, num_nodes, concat, colours)


def _dot_source(edges, title, inputs, num_nodes, concat, colours) -> str:
    lines = ["digraph cell {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];',
             f'  label="{title}"; labelloc=t;']
    for n in range(num_nodes):
        lines.append(f'  n{n} [label="{n}", fillcolor="{INPUT_COLOUR if n < inputs else INTERMEDIATE_COLOUR}"];')
    for s, t, op in edges:
        lines.append(f'  n{s} -> n{t} [label="{op}", color="{colours[op]}", fontcolor="{colours[op]}"];')
    if concat:
        lines.append(f'  out [label="out", fillcolor="{INPUT_COLOUR}"];')
        lines += [f"  n{n} -> out [style=dashed, color=gray];" for n in concat]
    return "\n".join(lines + ["}"]) + "\n"


def _draw_with_graphviz(edges, path, title, inputs, num_nodes, concat, colours) -> bool:
    """Whether ``dot`` drew the diagram (a failing ``dot`` leaves it to matplotlib)."""
    source = _dot_source(edges, title, inputs, num_nodes, concat, colours)

    def render(tmp):
        subprocess.run([shutil.which("dot"), "-Tpng", "-o", tmp], input=source, text=True,
                       capture_output=True, check=True, timeout=60)

    try:
        atomic_write(path, render)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _draw_with_matplotlib(edges, path, title, inputs, num_nodes, concat, colours) -> None:
    """Nodes in a row (inputs, intermediate nodes, output); each edge an arc
    above the row whose height grows with its span, its label at the apex, so
    no two labels share a place."""
    plt = pyplot()
    from matplotlib.patches import FancyArrowPatch

    span = num_nodes + (1 if concat else 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * span), 1.0 + 0.45 * span))
    bend = 0.5  # arc3's control point sits bend·span above the chord; the apex half of that
    for s, t, op in edges:
        ax.add_patch(FancyArrowPatch((s, 0), (t, 0), connectionstyle=f"arc3,rad={-bend}", arrowstyle="-|>",
                                     mutation_scale=12, shrinkA=14, shrinkB=14, color=colours[op], lw=1.5))
        ax.text((s + t) / 2, bend * (t - s) / 2, op, ha="center", va="bottom", fontsize=8, color=colours[op],
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    out = num_nodes
    for n in concat:  # output edges: concatenation, no operation (drawn below the row)
        ax.add_patch(FancyArrowPatch((n, 0), (out, 0), connectionstyle=f"arc3,rad={bend / 2}", arrowstyle="-|>",
                                     mutation_scale=10, shrinkA=14, shrinkB=14, color="gray", ls="--", lw=1))
    names = [str(n) for n in range(num_nodes)] + (["out"] if concat else [])
    for x, name in enumerate(names):
        colour = INTERMEDIATE_COLOUR if inputs <= x < num_nodes else INPUT_COLOUR
        ax.text(x, 0, name, ha="center", va="center", fontsize=10, zorder=3,
                bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="black"))
    ax.set_xlim(-0.6, span - 0.4)
    lowest = bend / 4 * max([out - n for n in concat] + [0])  # the apex of the deepest output edge
    ax.set_ylim(-lowest - 0.4, bend * max([t - s for s, t, _ in edges] + [1]) / 2 + 0.6)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def draw_search_cells(run, genotype: str) -> Optional[str]:
    """A search's end-of-run reporter (``SearchRun(reporters=[draw_search_cells])``): the final cells of
    ``genotype`` as PNG diagrams in the run directory, and the line naming them (nothing without matplotlib)."""
    if isinstance(run.model, NB201Network):
        g = NB201Genotype.parse(genotype)
        cells = {"cell": ([(j, i, op) for i, node in enumerate(g.nodes, start=1) for op, j in node
                           if op != "none"], 1, len(g.nodes) + 1, [len(g.nodes)])}
    else:
        g = Genotype.parse(genotype)
        cells = {t: ([(j, k + 2, op) for k, node in enumerate(g.nodes(t)) for op, j in node], 2,
                     g.steps(t) + 2, getattr(g, f"{t}_concat")) for t in ("normal", "reduce")}
    paths = []
    try:
        for cell_type, (edges, inputs, nodes, concat) in cells.items():
            path = os.path.join(run.out, f"cell-{cell_type}.png")
            draw_cell(edges, path, f"{cell_type} cell", inputs=inputs, num_nodes=nodes, concat=concat,
                      ops=run.model.arch.ops)
            paths.append(path)
    except ImportError:
        return None
    return f"cells drawn: {', '.join(paths)}"
