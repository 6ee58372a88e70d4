"""Genotypes: discrete cells, their derivation from α, and their text forms.

A :class:`Genotype` is DARTS' ``Genotype(normal=[(op, input), ...],
normal_concat=[...], reduce=[...], reduce_concat=[...])``. Two published forms
are read and written verbatim:

- two inputs per node: pairs ``2k, 2k+1`` feed intermediate node ``k + 2``;
- edge-all (SNAS' child graphs): every edge of the cell in node order, with
  ``none`` where an edge is absent, so a node may keep any number of inputs.

Inputs 0 and 1 are the cell's inputs; input ``i >= 2`` is intermediate node ``i``.
:class:`NB201Genotype` is NAS-Bench-201's ``|op~j|+|op~j|op~j|+|...|``.
"""
import ast
import json
import numbers
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from .errors import quoted
from .nn.ops import OPS

Pair = Tuple[str, int]

# Longest range(...) a genotype's concat may spell out (a cell has a handful of nodes).
_MAX_RANGE = 1000


def _index(value, where: str) -> int:
    """An integer node index (not a bool, float or string), or a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{where}: a node index must be an integer, got {quoted(value, 40)}")
    return int(value)


def _pair(value, where: str) -> Pair:
    """An (operation name, input index) pair, or a ValueError naming ``where``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: expected one of the (operation name, input index) pairs, got {quoted(value, 60)}")
    op, j = value
    if not isinstance(op, str):
        raise ValueError(f"{where}: the operation must be a name (a string), got {quoted(op, 40)}")
    return op, _index(j, where)


def _sequence(value, field: str):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"`{field}` must be a list, got {quoted(value, 60)}")
    return list(value)


def _edge_all_steps(n_pairs: int):
    """Number of nodes if ``n_pairs`` is an edge-all cell's length, else None."""
    steps = 0
    while steps * (steps + 3) // 2 < n_pairs:
        steps += 1
    return steps if steps * (steps + 3) // 2 == n_pairs else None


def _literal_or_range(node):
    """A literal, or ``range(a, b)`` with integer literals: DARTS' training log
    prints ``normal_concat=range(2, 6)``."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and 1 <= len(node.args) <= 3):
        bounds = [ast.literal_eval(a) for a in node.args]
        if all(type(b) is int for b in bounds) and (len(bounds) < 3 or bounds[2] != 0):
            r = range(*bounds)
            if len(r) > _MAX_RANGE:
                raise ValueError(f"range{tuple(bounds)} has {len(r)} nodes; a cell has at most {_MAX_RANGE}")
            return list(r)
    return ast.literal_eval(node)


@dataclass(frozen=True)
class Genotype:
    normal: Tuple[Pair, ...]
    normal_concat: Tuple[int, ...]
    reduce: Tuple[Pair, ...]
    reduce_concat: Tuple[int, ...]

    def __post_init__(self):
        # Exact: names are strings and indices integers (1.5, "1" and True are refused, not converted).
        for field in ("normal", "reduce"):
            pairs = tuple(_pair(p, f"`{field}`[{i}]") for i, p in enumerate(_sequence(getattr(self, field), field)))
            object.__setattr__(self, field, pairs)
        for field in ("normal_concat", "reduce_concat"):
            concat = tuple(_index(j, f"`{field}`[{i}]") for i, j in enumerate(_sequence(getattr(self, field), field)))
            if len(set(concat)) != len(concat):
                raise ValueError(f"`{field}` {list(concat)} names a node twice")
            object.__setattr__(self, field, concat)
        for cell_type in ("normal", "reduce"):
            self.nodes(cell_type)  # validates

    # -- structure ---------------------------------------------------------------
    def form(self, cell_type: str) -> str:
        """``"two-input"`` or ``"edge-all"``."""
        pairs = getattr(self, cell_type)
        steps = _edge_all_steps(len(pairs))
        if steps is not None and steps >= 2:
            start, edge_all = 0, True
            for k in range(steps):
                if sorted(j for _, j in pairs[start:start + k + 2]) != list(range(k + 2)):
                    edge_all = False
                    break
                start += k + 2
            if edge_all:
                return "edge-all"
        return "two-input"

    def nodes(self, cell_type: str) -> List[List[Pair]]:
        """Per intermediate node, its incoming (op, input) pairs, ``none`` left out."""
        if cell_type not in ("normal", "reduce"):
            raise ValueError(f"cell type must be 'normal' or 'reduce', got {cell_type!r}")
        pairs = getattr(self, cell_type)
        if not pairs or (self.form(cell_type) == "two-input" and len(pairs) % 2):
            raise ValueError(f"{cell_type}: {len(pairs)} (op, input) pairs fit neither two inputs per node "
                             f"nor every edge of a cell")
        if self.form(cell_type) == "edge-all":
            steps, groups, start = _edge_all_steps(len(pairs)), [], 0
            for k in range(steps):
                groups.append(list(pairs[start:start + k + 2]))
                start += k + 2
        else:
            groups = [list(pairs[i:i + 2]) for i in range(0, len(pairs), 2)]
        nodes = []
        for k, group in enumerate(groups):
            for op, j in group:
                if op not in OPS:
                    raise ValueError(f"{cell_type}: unknown operation {quoted(op, 40)} (register it with "
                                     f"pynas.nn.register_op)")
                if not 0 <= j < k + 2:
                    raise ValueError(f"{cell_type}: node {k + 2} takes input {j}; inputs must be in [0, {k + 2}) "
                                     f"(an edge to itself or a later node would make a cycle)")
            nodes.append([(op, j) for op, j in group if op != "none"])
        concat = getattr(self, f"{cell_type}_concat")
        if not concat or any(not 0 <= i < len(groups) + 2 for i in concat):
            raise ValueError(f"{cell_type}_concat {list(concat)} must name nodes in [0, {len(groups) + 2})")
        return nodes

    def steps(self, cell_type: str = "normal") -> int:
        return len(self.nodes(cell_type))

    # -- text forms --------------------------------------------------------------
    def __str__(self):
        fmt = lambda pairs: "[" + ", ".join(f"({op!r}, {j})" for op, j in pairs) + "]"
        return (f"Genotype(normal={fmt(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={fmt(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    @classmethod
    def parse(cls, text: str) -> "Genotype":
        """Reads DARTS' printed form (either layout); literals only, nothing is evaluated."""
        if not isinstance(text, str):
            raise ValueError(f"a genotype's text must be a string, got {type(text).__name__}")
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
            raise ValueError(f"not a Genotype(...) expression: {quoted(text)} ({e.msg if isinstance(e, SyntaxError) else e})") from None
        except (RecursionError, MemoryError):
            raise ValueError(f"not a Genotype(...) expression: {quoted(text)} (nested too deeply)") from None
        if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "Genotype"):
            raise ValueError(f"expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...), "
                             f"got {quoted(text)}")
        if any(isinstance(a, ast.Starred) for a in tree.args) or any(kw.arg is None for kw in tree.keywords):
            raise ValueError("Genotype fields must be given one by one (no *args or **kwargs)")
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        if len(tree.args) > len(fields):
            raise ValueError(f"Genotype takes at most {len(fields)} positional fields, got {len(tree.args)}")
        values = {}
        for name, node in zip(fields, tree.args):
            values[name] = node
        for kw in tree.keywords:
            if kw.arg not in fields:
                raise ValueError(f"Genotype has no field {kw.arg!r}")
            if kw.arg in values:
                raise ValueError(f"Genotype field {kw.arg!r} is given twice")
            values[kw.arg] = kw.value
        missing = [f for f in fields if f not in values]
        if missing:
            raise ValueError(f"Genotype is missing {missing}")
        literal = {}
        for k, v in values.items():
            try:
                literal[k] = _literal_or_range(v)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as e:
                raise ValueError(f"Genotype fields must be literals: `{k}` is not ({quoted(str(e), 100)})") from None
        for name in ("normal", "reduce", "normal_concat", "reduce_concat"):
            if not isinstance(literal[name], (list, tuple)):
                raise ValueError(f"`{name}` must be a list, got {quoted(literal[name], 60)}")
        return cls(**literal)

    def to_json(self) -> str:
        return json.dumps({"normal": [list(p) for p in self.normal], "normal_concat": list(self.normal_concat),
                           "reduce": [list(p) for p in self.reduce], "reduce_concat": list(self.reduce_concat)})

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, integers of too many digits
            raise ValueError(f"not a genotype in JSON: {quoted(text)} ({quoted(str(e), 100)})") from None
        if not isinstance(data, dict):
            raise ValueError(f"not a genotype in JSON: {quoted(text)} (expected an object with the keys {fields})")
        unknown, missing = sorted(set(data) - set(fields)), [f for f in fields if f not in data]
        if unknown or missing:
            raise ValueError("genotype JSON: " + (f"unknown keys {[quoted(k, 30) for k in unknown[:5]]}" if unknown
                                                   else f"missing keys {missing}"))
        for name in fields:
            if not isinstance(data[name], list):
                raise ValueError(f"genotype JSON: `{name}` must be a list, got {quoted(data[name], 60)}")
        return cls(*(data[f] for f in fields))


@dataclass(frozen=True)
class NB201Genotype:
    """NAS-Bench-201 cell: for nodes 1..3, the (op, input) of every incoming edge."""

    nodes: Tuple[Tuple[Pair, ...], ...]

    def __post_init__(self):
        nodes = tuple(tuple(_pair(p, f"NB201 node {i}") for p in _sequence(node, f"NB201 node {i}"))
                      for i, node in enumerate(_sequence(self.nodes, "nodes"), start=1))
        object.__setattr__(self, "nodes", nodes)
        for i, node in enumerate(nodes, start=1):
            inputs = [j for _, j in node]
            for op, j in node:
                if op not in OPS:
                    raise ValueError(f"NB201 node {i}: unknown operation {quoted(op, 40)}")
                if not 0 <= j < i:
                    raise ValueError(f"NB201 node {i}: input {j} must be in [0, {i})")
            duplicates = sorted({j for j in inputs if inputs.count(j) > 1})
            if duplicates:
                raise ValueError(f"NB201 node {i}: more than one edge from node {duplicates[0]}")
            if len(inputs) != i:
                raise ValueError(f"NB201 node {i} is incomplete: it needs an edge from each of nodes 0..{i - 1}, "
                                 f"got {len(inputs)}")
        if len(nodes) != 3:
            raise ValueError(f"NB201 cells have 3 nodes, got {len(nodes)}")

    def __str__(self):
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

    @classmethod
    def parse(cls, text: str) -> "NB201Genotype":
        """Reads ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` exactly (ASCII digits, every edge once)."""
        if not isinstance(text, str):
            raise ValueError(f"an NB201 string must be a string, got {type(text).__name__}")
        nodes = []
        for part in text.strip().split("+"):
            if not (part.startswith("|") and part.endswith("|")) or len(part) < 3:
                raise ValueError(f"NB201 string: node {quoted(part, 60)} must look like |op~j|op~j|")
            node = []
            for item in part[1:-1].split("|"):
                match = re.fullmatch(r"([^|~+\s]+)~(0|[1-9][0-9]{0,5})", item, flags=re.ASCII)
                if match is None:
                    raise ValueError(f"NB201 string: edge {quoted(item, 60)} must look like op~j "
                                     f"(an operation name and an input node number)")
                node.append((match.group(1), int(match.group(2))))
            nodes.append(tuple(node))
        return cls(tuple(nodes))


# -- derivation rules -------------------------------------------------------------


def _edge_groups(num_edges: int, inputs: int = 2) -> Tuple[int, List[List[int]]]:
    """(steps, per node the α rows of its incoming edges) for a cell with ``num_edges`` edges."""
    steps, groups, row = 0, [], 0
    while row < num_edges:
        groups.append(list(range(row, row + inputs + steps)))
        row += inputs + steps
        steps += 1
    if row != num_edges:
        raise ValueError(f"{num_edges} α rows do not form a cell with {inputs} inputs")
    return steps, groups


# The derivation rules :func:`derive_cell` knows.
RULES = ("darts", "darts-with-none", "snas", "threshold")


def _check_threshold(threshold) -> float:
    """FairDARTS' op threshold: a number strictly between 0 and 1 (σ(α) lies there)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be a number in (0, 1), got {quoted(threshold, 40)}")
    return float(threshold)


def derive_cell(weights: torch.Tensor, ops: Sequence[str], rule: str = "darts", k: int = 2,
                mask: torch.Tensor = None, threshold: float = 0.85) -> Tuple[List[Pair], List[int]]:
    """(pairs, concat) of one cell from its ``[E, K]`` relaxed weights.

    - ``darts``: per node, the ``k`` incoming edges whose best non-``none`` weight
      is largest; each keeps its argmax excluding ``none`` (two-input form).
    - ``darts-with-none``: the ``darts`` rule with ``none`` ranked and chosen like
      any operation (OLES' code, model_search.py:137-154, whose line excluding
      ``none`` is commented out); a kept ``none`` edge adds nothing to its node.
    - ``snas``: every edge whose argmax is not ``none`` (edge-all form, with
      ``none`` where an edge is dropped); a node may keep any number of edges.
    - ``threshold``: FairDARTS' ``threshold_sparse`` (xiaomi-automl/FairDARTS,
      fairdarts/utils.py:161-184): the ``darts`` ranking (top ``k`` edges per node
      by their largest weight, ties to the lower input), each edge kept with its
      argmax only if that weight is ``>= threshold`` (edge-all form). A node may
      keep 0, 1 or 2 edges; the child network drops nodes left without input.
      FairDARTS' space has no ``none``; here ``none`` is left out as in ``darts``.

    Masked-out entries (``mask``) are never chosen; a DARTS cell in which some
    node keeps fewer than two edges is written in the edge-all form. The concat
    lists every node (those without input are dropped by the child network).
    """
    if rule not in RULES:
        raise ValueError(f"derivation rule must be one of {RULES}, got {rule!r}")
    threshold = _check_threshold(threshold)
    w = weights.detach().cpu().double()  # exact for any input precision: the threshold is compared as given
    if mask is not None:
        w = w.masked_fill(~mask.cpu(), float("-inf"))
    steps, groups = _edge_groups(w.size(0))
    none = ops.index("none") if "none" in ops else None
    chosen: List[List[Pair]] = []  # per node, its kept (op, input) pairs
    for rows in groups:
        if rule in ("darts", "darts-with-none", "threshold"):
            w_ops = w[rows].clone()
            if none is not None and rule != "darts-with-none":
                w_ops[:, none] = float("-inf")
            strength = w_ops.max(-1).values
            # Strongest first, as DARTS lists them; removed edges are never kept.
            order = [j for j in strength.argsort(descending=True, stable=True).tolist() if strength[j] > float("-inf")]
            top = order[:k]
            if rule == "threshold":  # an edge's strength is its argmax's weight
                top = [j for j in top if strength[j] >= threshold]
            chosen.append([(ops[int(w_ops[j].argmax())], j) for j in top])
        else:
            chosen.append([(ops[int(w[r].argmax())], j) for j, r in enumerate(rows)
                           if w[r].max() > float("-inf") and ops[int(w[r].argmax())] != "none"])
    if rule in ("darts", "darts-with-none") and all(len(node) == k == 2 for node in chosen):
        pairs = [p for node in chosen for p in node]
    else:  # edge-all form: every edge in order, `none` where it is not kept
        pairs = []
        for node, rows in zip(chosen, groups):
            kept = dict((j, op) for op, j in node)
            pairs += [(kept.get(j, "none"), j) for j in range(len(rows))]
    return pairs, list(range(2, 2 + steps))


def derive_genotype(arch, rule: str = "darts", threshold: float = 0.85) -> Genotype:
    """The genotype of an :class:`~pynas.arch.Architecture` with ``normal`` and
    ``reduce`` cells, read from its deterministic relaxation of α (times each
    edge's normalisation weight where it has β, as PC-DARTS' ``genotype()``);
    ``threshold`` is the ``threshold`` rule's (FairDARTS ranks σ(α), model_search.py:151)."""
    cells: Dict[str, Tuple] = {}
    for cell_type in ("normal", "reduce"):
        cells[cell_type] = derive_cell(arch.derivation_weights(cell_type), arch.ops, rule, mask=arch.mask(cell_type),
                                       threshold=threshold)
    return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])


def derive_nb201(weights: torch.Tensor, ops: Sequence[str]) -> NB201Genotype:
    """NAS-Bench-201: the argmax of every edge, ``none`` included (6 edges, nodes 1..3)."""
    w = weights.detach().cpu()
    nodes, row = [], 0
    for i in range(1, 4):
        nodes.append(tuple((ops[int(w[row + j].argmax())], j) for j in range(i)))
        row += i
    if row != w.size(0):
        raise ValueError(f"NB201 cells have 6 edges, got {w.size(0)} rows")
    return NB201Genotype(tuple(nodes))


def random_genotype(ops: Sequence[str], steps: int = 4, seed: int = 0) -> Genotype:
    """A uniformly random two-input cell of a space (the random-search baseline):
    per node two distinct inputs among its predecessors, each edge an operation
    drawn uniformly from ``ops`` without ``none``; the same for both cell types
    draws (independently seeded by ``seed``)."""
    import random

    rng = random.Random(seed)
    choices = [op for op in ops if op != "none"]
    if not choices:
        raise ValueError("random_genotype: the space has no operation besides `none`")
    cells = {}
    for cell_type in ("normal", "reduce"):
        pairs = []
        for k in range(steps):
            for j in sorted(rng.sample(range(k + 2), 2)):
                pairs.append((rng.choice(choices), j))
        cells[cell_type] = pairs
    concat = list(range(2, 2 + steps))
    return Genotype(cells["normal"], concat, cells["reduce"], concat)


G = Genotype.parse
DARTS_V1 = G("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")
DARTS_V2 = G("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
SNAS_MILD = G("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('dil_conv_5x5', 2)], reduce_concat=[2, 3, 4, 5])")
SNAS_MILD_EDGE_ALL = G("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 1), ('none', 2), ('skip_connect', 0), ('skip_connect', 1), ('none', 3), ('none', 2), ('skip_connect', 0), ('sep_conv_3x3', 1), ('none', 4), ('none', 3), ('none', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('none', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('none', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('none', 3), ('max_pool_3x3', 0), ('dil_conv_5x5', 2), ('none', 1), ('none', 3), ('none', 4)], reduce_concat=[2, 3, 4, 5])")
# NASNet-A and AmoebaNet-A (the cell-analysis paper's Fig. 1), as published.
NASNET = G(
    "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
    "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), "
    "('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), "
    "('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])")
AMOEBANET = G(
    "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), "
    "('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), "
    "('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
    "('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])")
del G

GENOTYPES = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2, "SNAS_mild": SNAS_MILD,
             "SNAS_mild_edge_all": SNAS_MILD_EDGE_ALL, "NASNet": NASNET, "AmoebaNet": AMOEBANET}
