"""Cell topology: width and depth, and randomly connected or randomly operated
variants of a cell ("Understanding Architectures Learnt by Cell-based NAS",
ICLR 2020, Sec. 3.2 and App. A.2).

A cell is a DAG: input nodes 0 and 1, intermediate nodes 2, 3, ..., and one
output node that concatenates the ``*_concat`` nodes. A NAS-Bench-201 cell is one
too: input node 0, intermediate nodes 1 and 2, output node 3, every edge j -> i
carrying one operation (``none`` removes it). Width is given in units of c, the
width every intermediate node is assumed to share (Sec. 3.2).
"""
import os
import random
import sys
from fractions import Fraction
from typing import Dict, List, Optional, Sequence

from ..genotype import GENOTYPES, Genotype, NB201Genotype, Pair
from ..io import write_json, write_text
from ..nn.child import live_nodes
from ..nn.ops import OPS
from ..nn.spaces import DARTS_WITHOUT_NONE, NB201


CELL_TYPES = ("normal", "reduce")
NB201_CELL = "cell"  # an NB201 network's one cell type, as its Architecture names it


# -- width and depth (Sec. 3.2) ---------------------------------------------------------


def _graph(genotype: Genotype, cell_type: str):
    """(per intermediate node its (op, input) pairs, concat nodes), with the nodes
    an edge-all cell leaves without inputs pruned exactly as EvalCell prunes them,
    so the figures describe the network that is built."""
    return live_nodes(genotype.nodes(cell_type), getattr(genotype, f"{cell_type}_concat"))


def cell_width(genotype: Genotype, cell_type: str = "normal") -> float:
    """Width of a cell in units of c (Sec. 3.2).

    Each intermediate node has width c; a node fed partly by other intermediate
    nodes counts c reduced by the fraction of its connections that come from
    intermediate nodes, i.e. ``c * (#connections from input nodes) / (#connections)``.
    Every intermediate node counts, not only the concatenated ones: AmoebaNet's
    published 4c needs its nodes 2 (1c) and 3 (0.5c), which only feed later
    nodes. Reproduces DARTS_V2 3.5c, NASNet 5c, AmoebaNet 4c, SNAS_mild 4c.
    """
    nodes, _ = _graph(genotype, cell_type)
    width = sum((Fraction(sum(j < 2 for _, j in edges), len(edges)) for edges in nodes if edges), Fraction(0))
    return float(width)


def cell_depth(genotype: Genotype, cell_type: str = "normal") -> int:
    """Depth of a cell (Sec. 3.2): the number of connections on the longest path
    from an input node to the output node, the edge from a concatenated node into
    the output counted (DARTS_V2: 0 -> 2 -> 5 -> output is 3). Paths must end in
    the output, so they run through a concatenated node (AmoebaNet:
    0 -> 2 -> 3 -> 4 -> output is 4)."""
    nodes, concat = _graph(genotype, cell_type)
    depth = {0: 0, 1: 0}  # longest path (in connections) from an input node
    for k, edges in enumerate(nodes):
        if edges:
            depth[k + 2] = 1 + max(depth[j] for _, j in edges)
    if not concat:
        raise ValueError(f"{cell_type} cell: no concatenated node has an input")
    return 1 + max(depth[i] for i in concat)


def _nb201_sources(genotype: NB201Genotype) -> List[List[int]]:
    """Per node 1, 2, 3, the sources of its edges that carry the input: ``none``
    removes an edge, and a node left without edges removes the edges out of it
    (nothing of the input reaches it), as ``live_nodes`` prunes DARTS cells."""
    alive, sources = {0}, []
    for i, node in enumerate(genotype.nodes, start=1):
        live = [j for op, j in node if op != "none" and j in alive]
        if live:
            alive.add(i)
        sources.append(live)
    return sources


def nb201_width(genotype: NB201Genotype) -> float:
    """Width of a NAS-Bench-201 cell in units of c, as :func:`cell_width`: each
    intermediate node (1 and 2) counts c times the fraction of its edges that come
    from the input node 0. Node 3 is the output, so an edge 0 -> 3 adds no width."""
    *intermediate, _ = _nb201_sources(genotype)
    return float(sum((Fraction(s.count(0), len(s)) for s in intermediate if s), Fraction(0)))


def nb201_depth(genotype: NB201Genotype) -> int:
    """Depth of a NAS-Bench-201 cell, as :func:`cell_depth`: the connections on the
    longest path from node 0 to the output node 3. The edges into node 3 carry
    operations, so they end the path; no concatenation adds a connection."""
    depth = {0: 0}  # longest path (in connections) from the input node
    for i, sources in enumerate(_nb201_sources(genotype), start=1):
        if sources:
            depth[i] = 1 + max(depth[j] for j in sources)
    output = len(genotype.nodes)
    if output not in depth:
        raise ValueError(f"NB201 cell {genotype}: no path from the input node 0 to the output node {output} "
                         f"(every path has a 'none' edge)")
    return depth[output]


def topology(genotype) -> Dict[str, Dict[str, float]]:
    """``{cell type: {"width": ..., "depth": ...}}``: the normal and the reduction
    cell of a DARTS-style genotype, the one cell of a NAS-Bench-201 genotype."""
    if isinstance(genotype, NB201Genotype):
        return {NB201_CELL: {"width": nb201_width(genotype), "depth": nb201_depth(genotype)}}
    return {t: {"width": cell_width(genotype, t), "depth": cell_depth(genotype, t)} for t in CELL_TYPES}


# -- random variants (App. A.2) -----------------------------------------------------------


def _cell_types(cell_type: str) -> Sequence[str]:
    if cell_type == "both":
        return CELL_TYPES
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell type must be 'normal', 'reduce' or 'both', got {cell_type!r}")
    return (cell_type,)


def _loose_ends(nodes: List[List[Pair]]) -> List[int]:
    """Intermediate nodes no other node reads: what NASNet-style cells concatenate."""
    used = {j for edges in nodes for _, j in edges}
    return [k + 2 for k in range(len(nodes)) if k + 2 not in used]


def _variant_concat(original: List[List[Pair]], concat: Sequence[int], rewired: List[List[Pair]]) -> List[int]:
    """The concat of a rewired cell under the original's rule. DARTS/SNAS cells
    concatenate every intermediate node, which stays so; NASNet/AmoebaNet cells
    concatenate their loose ends, which rewiring changes, so they are recomputed
    (else a node nobody reads would be computed for nothing). Any other concat is kept."""
    if list(concat) != list(range(2, len(original) + 2)) and list(concat) == _loose_ends(original):
        return _loose_ends(rewired)
    return list(concat)


def _rewire(genotype: Genotype, cell_type: str, rng: random.Random):
    """(pairs, concat) of ``cell_type`` with each edge's source redrawn uniformly
    from its node's predecessors (input nodes and earlier intermediate nodes).
    Edges are drawn independently, so a node's two edges may share a source, as
    they do in published cells (NASNet's node 5 applies two pools to input 0)."""
    nodes = genotype.nodes(cell_type)
    if any(len(edges) != 2 for edges in nodes):
        raise ValueError(f"{cell_type} cell: random connections need two inputs per node, "
                         f"got {[len(e) for e in nodes]}")
    rewired = [[(op, rng.randrange(k + 2)) for op, _ in edges] for k, edges in enumerate(nodes)]
    concat = _variant_concat(nodes, getattr(genotype, f"{cell_type}_concat"), rewired)
    return [p for edges in rewired for p in edges], concat


def _reoperate(genotype: Genotype, cell_type: str, rng: random.Random, ops: Sequence[str]):
    """(pairs, concat) of ``cell_type`` with each present edge's operation redrawn
    uniformly from ``ops``; sources, absent (``none``) edges and concat are kept."""
    pairs = [(op if op == "none" else rng.choice(ops), j) for op, j in getattr(genotype, cell_type)]
    return pairs, list(getattr(genotype, f"{cell_type}_concat"))


def _variants(genotype: Genotype, n: int, seed: int, cell_type: str, redraw) -> List[Genotype]:
    if n < 1:
        raise ValueError(f"the number of variants must be at least 1, got {n}")
    varied = _cell_types(cell_type)
    rng = random.Random(seed)
    variants = []
    for _ in range(n):
        cells = {t: redraw(t, rng) if t in varied else (getattr(genotype, t), getattr(genotype, f"{t}_concat"))
                 for t in CELL_TYPES}
        variants.append(Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1]))
    return variants


def random_connection_variants(genotype: Genotype, n: int, seed: int = 0,
                               cell_type: str = "normal") -> List[Genotype]:
    """``n`` randomly connected variants (App. A.2): every node keeps its place in
    the node order and its operations; each operation's source node is redrawn
    uniformly from the node's predecessors. ``cell_type``: ``"normal"`` (the
    paper studies normal cells), ``"reduce"`` or ``"both"``; the other cell is
    kept. Seeded by ``random.Random(seed)``; variants are not deduplicated.
    Each node must have exactly two inputs (the two-input form)."""
    if isinstance(genotype, NB201Genotype):
        raise ValueError("an NB201 cell has no connections to redraw: each node takes one edge from every earlier "
                         "node (random operation variants apply)")
    return _variants(genotype, n, seed, cell_type, lambda t, rng: _rewire(genotype, t, rng))


def _nb201_operation_variants(genotype: NB201Genotype, n: int, seed: int, ops: Sequence[str]) -> List[NB201Genotype]:
    if n < 1:
        raise ValueError(f"the number of variants must be at least 1, got {n}")
    rng = random.Random(seed)
    return [NB201Genotype(tuple(tuple((op if op == "none" else rng.choice(ops), j) for op, j in node)
                                for node in genotype.nodes)) for _ in range(n)]


def random_operation_variants(genotype, n: int, seed: int = 0, ops: Optional[Sequence[str]] = None,
                              cell_type: str = "normal") -> list:
    """``n`` variants of operations (App. A.2): the topology is kept and every
    edge's operation redrawn uniformly from ``ops`` (default: the DARTS
    operations without ``none``, NAS-Bench-201's for an NB201 genotype, whose one
    cell is varied). Seeded by ``random.Random(seed)``."""
    nb201 = isinstance(genotype, NB201Genotype)
    default = NB201.ops if nb201 else DARTS_WITHOUT_NONE.ops
    ops = [op for op in default if op != "none"] if ops is None else list(ops)
    if not ops or "none" in ops or any(op not in OPS for op in ops):
        raise ValueError(f"candidate operations must be known, non-empty and exclude 'none', got {ops}")
    if nb201:
        if cell_type == "reduce":
            raise ValueError("an NB201 genotype has no reduction cell")
        return _nb201_operation_variants(genotype, n, seed, ops)
    return _variants(genotype, n, seed, cell_type, lambda t, rng: _reoperate(genotype, t, rng, ops))


def variant_listing(variants: Sequence[Genotype]) -> List[dict]:
    """Per variant (numbered from 1, like the paper's C1, C2, ...), its genotype
    string and the width and depth of both cells."""
    return [{"index": i, "genotype": str(g), **topology(g)} for i, g in enumerate(variants, start=1)]


# -- command line -------------------------------------------------------------------------


def load_genotype(text: str) -> Genotype:
    """A genotype from a name (``pynas.genotype.GENOTYPES``, NASNet, AmoebaNet), a
    file holding one, or its text; errors name ``--genotype``."""
    from ..select.evaluate import parse_genotype

    if text in GENOTYPES:
        return GENOTYPES[text]
    try:
        return parse_genotype(text)
    except (ValueError, OSError) as e:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"--genotype {shown!r}: {e} (give one of {sorted(GENOTYPES)}, a file or Genotype(...) text)") \
            from None


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _topology_rows(figures: Dict[str, Dict[str, float]], label: str = "") -> List[List[str]]:
    return [[label, t, f"{f['width']:g}c", str(f["depth"])] for t, f in figures.items()]


def _fail(command: str, error: Exception) -> int:
    print(f"pynas analyze {command}: {error}", file=sys.stderr)
    return 2


def _topology_command(args) -> int:
    try:
        genotype = load_genotype(args.genotype)
        figures = topology(genotype)
    except ValueError as e:
        return _fail("topology", e)
    write_json(os.path.join(args.out, "topology.json"), {"genotype": str(genotype), **figures})
    print(_table([["cell", "width", "depth"]] + [row[1:] for row in _topology_rows(figures)]))
    print(f"wrote {os.path.join(args.out, 'topology.json')}")
    return 0


def _draw_variants(genotype, args) -> list:
    """The variants ``args`` ask for; errors name the argument at fault."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.kind == "connections":
        try:
            return random_connection_variants(genotype, args.n, args.seed, args.cells)
        except ValueError as e:
            raise ValueError(f"--kind connections: {e}") from None
    if isinstance(genotype, NB201Genotype) and args.cells == "reduce":
        raise ValueError("--cells reduce: an NB201 genotype has no reduction cell")
    ops = [op for op in args.ops.split(",") if op] if args.ops else None
    try:
        return random_operation_variants(genotype, args.n, args.seed, ops, args.cells)
    except ValueError as e:
        raise ValueError(f"--ops: {e}") from None


def _variants_command(args) -> int:
    try:
        genotype = load_genotype(args.genotype)
        variants = _draw_variants(genotype, args)
        base, listing = topology(genotype), variant_listing(variants)
    except ValueError as e:
        return _fail("variants", e)
    for entry in listing:
        write_text(os.path.join(args.out, f"variant-{entry['index']}.txt"), entry["genotype"] + "\n")
    write_json(os.path.join(args.out, "variants.json"),
               {"base": {"genotype": str(genotype), **base}, "kind": args.kind,
                "cells": NB201_CELL if NB201_CELL in base else args.cells, "n": args.n, "seed": args.seed,
                "variants": listing})
    rows = [["variant", "cell", "width", "depth"]] + _topology_rows(base, "base")
    for entry in listing:
        rows += _topology_rows({t: entry[t] for t in base}, f"C{entry['index']}")
    print(_table(rows))
    print(f"wrote {args.n} variants (variant-<i>.txt, usable as --genotype FILE) and variants.json to {args.out}")
    return 0


GENOTYPE_HELP = f"name ({', '.join(sorted(GENOTYPES))}), file, Genotype(...) text or a NAS-Bench-201 string"


def register_commands(subparsers) -> None:
    """Adds ``topology`` and ``variants`` to an argparse subparsers object."""
    p = subparsers.add_parser("topology", help="width and depth of a genotype's cells (ICLR 2020 cell analysis, Sec. 3.2)")
    p.add_argument("--genotype", required=True, help=GENOTYPE_HELP)
    p.add_argument("--out", default="analysis-topology", help="folder for topology.json")
    p.set_defaults(func=_topology_command)

    p = subparsers.add_parser("variants", help="random connection or operation variants of a genotype (App. A.2)")
    p.add_argument("--genotype", required=True, help=GENOTYPE_HELP)
    p.add_argument("--kind", choices=("connections", "operations"), default="connections")
    p.add_argument("--n", type=int, default=5, help="number of variants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", choices=("normal", "reduce", "both"), default="normal",
                   help="which cells to vary (a NAS-Bench-201 genotype has one, always varied)")
    p.add_argument("--ops", default=None,
                   help="comma-separated candidate operations for --kind operations (default: DARTS' without none)")
    p.add_argument("--out", default="analysis-variants", help="folder for variants.json and variant-<i>.txt")
    p.set_defaults(func=_variants_command)
