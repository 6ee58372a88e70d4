"""Genotype text forms, derivation rules and child networks."""
import pytest
import torch

from pynas.arch import Architecture
from pynas.genotype import (DARTS_V2, GENOTYPES, SNAS_MILD, SNAS_MILD_EDGE_ALL, Genotype, NB201Genotype,
                            derive_cell, derive_genotype, derive_nb201)
from pynas.nn import DARTS, NB201, EvalNetwork
from pynas.nn.ops import Identity
from pynas.nn.cells import cell_edges

REFERENCE_TEXT = {
    "NASNet": "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
    "AmoebaNet": "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
}


@pytest.mark.parametrize("name", sorted(set(GENOTYPES) | set(REFERENCE_TEXT)))
def test_parse_print_parse_is_identity(name):
    g = GENOTYPES[name] if name in GENOTYPES else Genotype.parse(REFERENCE_TEXT[name])
    text = str(g)
    assert Genotype.parse(text) == g
    assert str(Genotype.parse(text)) == text
    assert Genotype.from_json(g.to_json()) == g
    if name in REFERENCE_TEXT:
        assert text == REFERENCE_TEXT[name]


def test_edge_all_form_matches_the_two_input_form():
    # SNAS_mild published both ways: the same edges per node.
    assert SNAS_MILD_EDGE_ALL.form("normal") == "edge-all" and SNAS_MILD.form("normal") == "two-input"
    for cell_type in ("normal", "reduce"):
        edge_all = [sorted(n, key=lambda p: p[1]) for n in SNAS_MILD_EDGE_ALL.nodes(cell_type)]
        two = [sorted(n, key=lambda p: p[1]) for n in SNAS_MILD.nodes(cell_type)]
        assert edge_all == two


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('bogus_op', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "unknown operation"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 2)], normal_concat=[2], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "cycle"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', -1)], normal_concat=[2], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "inputs must be in"),
    ("Genotype(normal=[('skip_connect', 0)], normal_concat=[2], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "pairs fit neither"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[7], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "normal_concat"),
    ("Genotype(normal=[('skip_connect', 0)], normal_concat=[2])", "missing"),
    ("Genotype(normal=__import__('os').system('true'), normal_concat=[2], reduce=[], reduce_concat=[2])", "literals"),
    ("print('hello')", "Genotype"),
    ("Genotype(normal=[('skip', 0, 1)], normal_concat=[2], reduce=[], reduce_concat=[2])", "pairs"),
])
def test_bad_genotypes_raise(text, message):
    with pytest.raises(ValueError, match=message):
        Genotype.parse(text)


def test_nb201_strings():
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    g = NB201Genotype.parse(text)
    assert str(g) == text and NB201Genotype.parse(str(g)) == g
    for bad, message in [("|nor_conv_3x3~1|", "input 1"), ("|foo~0|", "unknown operation"), ("nor_conv_3x3~0", "must look like"),
                         ("|nor_conv_3x3-0|", "op~j")]:
        with pytest.raises(ValueError, match=message):
            NB201Genotype.parse(bad)


def _alpha_for(nodes, ops, steps=4):
    """α that makes `nodes` (per node: {input: op}) the clear choice; other ops/edges low."""
    E = len(cell_edges(steps))
    alpha = torch.zeros(E, len(ops))
    alpha[:, ops.index("none")] = 5.0  # `none` dominates everywhere, as it often does in DARTS
    row = 0
    for k in range(steps):
        for j in range(k + 2):
            if j in nodes[k]:
                alpha[row, ops.index(nodes[k][j][0])] = nodes[k][j][1]
            row += 1
    return alpha


def test_darts_rule_on_hand_made_alpha():
    ops = DARTS.ops
    nodes = [{0: ("sep_conv_3x3", 3.0), 1: ("skip_connect", 2.0)},
             {2: ("dil_conv_5x5", 4.0), 0: ("max_pool_3x3", 1.0), 1: ("avg_pool_3x3", 0.5)},
             {3: ("sep_conv_5x5", 2.0), 1: ("sep_conv_3x3", 2.5)},
             {4: ("skip_connect", 1.5), 0: ("dil_conv_3x3", 3.5)}]
    pairs, concat = derive_cell(_alpha_for(nodes, ops).softmax(-1), ops, "darts")
    assert pairs == [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 0),
                     ("sep_conv_3x3", 1), ("sep_conv_5x5", 3), ("dil_conv_3x3", 0), ("skip_connect", 4)]
    assert concat == [2, 3, 4, 5]


def test_snas_rule_keeps_every_non_none_edge():
    ops = DARTS.ops
    nodes = [{0: ("sep_conv_3x3", 6.0)}, {0: ("skip_connect", 7.0), 1: ("max_pool_3x3", 6.0), 2: ("dil_conv_3x3", 8.0)},
             {}, {3: ("sep_conv_5x5", 9.0)}]
    pairs, _ = derive_cell(_alpha_for(nodes, ops), ops, "snas")
    g = Genotype(pairs, [2, 3, 4, 5], pairs, [2, 3, 4, 5])
    assert g.form("normal") == "edge-all"
    assert g.nodes("normal") == [[("sep_conv_3x3", 0)], [("skip_connect", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 2)],
                                 [], [("sep_conv_5x5", 3)]]


def test_nb201_rule_includes_none():
    w = torch.zeros(6, len(NB201.ops))
    choice = ["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]
    for e, op in enumerate(choice):
        w[e, NB201.ops.index(op)] = 1.0
    assert str(derive_nb201(w, NB201.ops)) == "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


def test_derive_genotype_from_architecture_respects_masks():
    arch = Architecture(DARTS, 14)
    with torch.no_grad():
        arch.alphas["normal"].copy_(_alpha_for([{0: ("sep_conv_3x3", 3.0), 1: ("skip_connect", 2.0)}] * 4, DARTS.ops))
    arch.fix_op("normal", 0, "dil_conv_3x3")
    g = derive_genotype(arch)
    assert g.normal[0] == ("dil_conv_3x3", 0) and g.normal[1] == ("skip_connect", 1)
    arch.remove_edge("normal", 1)  # node 2 keeps one edge: written edge-all
    g = derive_genotype(arch)
    assert g.form("normal") == "edge-all" and g.nodes("normal")[0] == [("dil_conv_3x3", 0)]
    assert len(g.nodes("normal")[1]) == 2


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2", "SNAS_mild", "SNAS_mild_edge_all"])
def test_child_networks_run_with_aux_and_drop_path(name):
    model = EvalNetwork(GENOTYPES[name], C=8, layers=5, auxiliary=True, drop_path_prob=0.2)
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    model.eval()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert aux is None


def test_edge_all_child_drops_nodes_without_inputs():
    # Node 3 gets no input, node 4 only from node 3: both drop, node 5 stays.
    pairs = [("sep_conv_3x3", 0), ("skip_connect", 1),
             ("none", 0), ("none", 1), ("none", 2),
             ("none", 0), ("none", 1), ("none", 2), ("skip_connect", 3),
             ("none", 0), ("dil_conv_3x3", 1), ("none", 2), ("none", 3), ("none", 4)]
    g = Genotype(pairs, [2, 3, 4, 5], pairs, [2, 3, 4, 5])
    model = EvalNetwork(g, C=4, layers=3, auxiliary=False)
    assert model.cells[0].concat == [2, 5]
    logits, _ = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10)


def test_random_genotype_is_a_uniform_two_input_cell_of_the_space():
    from collections import Counter

    from pynas.genotype import random_genotype
    from pynas.nn import DARTS

    g = random_genotype(DARTS.ops, seed=3)
    assert g == random_genotype(DARTS.ops, seed=3) != random_genotype(DARTS.ops, seed=4)
    for cell_type in ("normal", "reduce"):
        for k, node in enumerate(g.nodes(cell_type)):
            inputs = [j for _, j in node]
            assert len(set(inputs)) == 2 and all(0 <= j < k + 2 for j in inputs)
            assert all(op in DARTS.ops and op != "none" for op, _ in node)
    # Node 2 of one cell: its input pair is always {0, 1}; the 7 operations of its first edge come up alike.
    ops = Counter(random_genotype(DARTS.ops, steps=1, seed=s).normal[0][0] for s in range(2800))
    assert set(ops) == set(DARTS.ops) - {"none"} and max(ops.values()) - min(ops.values()) < 120


def test_drop_path_zeroes_whole_samples_of_non_identity_edges_and_scales_the_rest():
    # DARTS' drop path: each sample's op output is dropped with probability p, kept ones scaled by
    # 1/(1-p); identity edges are never dropped; eval mode drops nothing.
    torch.manual_seed(0)
    model = EvalNetwork(DARTS_V2, C=4, layers=3, auxiliary=False).double()
    cell, p = model.cells[0], 0.3
    outputs = []
    hooks = [op.register_forward_hook(lambda m, i, o: outputs.append((m, o))) for ops in cell.ops for op in ops]
    B = 600
    s0 = torch.randn(B, 12, 4, 4, dtype=torch.float64)
    out = cell(s0, s0, drop_prob=p)
    dropped, seen = 0, 0
    for n, (inputs, ops) in enumerate(zip(cell.nodes, cell.ops)):
        produced = outputs[sum(len(o) for o in cell.ops[:n]):][:len(ops)]
        assert [m for m, _ in produced] == list(ops)
        # Find, per sample, the keep pattern of the node's droppable edges that reproduces it.
        fixed = sum(h for m, h in produced if isinstance(m, Identity))
        droppable = [h for m, h in produced if not isinstance(m, Identity)]
        if n + 2 not in cell.concat or not droppable:
            continue
        c = cell.concat.index(n + 2)
        node = out[:, c * 4:(c + 1) * 4]  # the node's channels of the cell output (C = 4)
        patterns = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * len(droppable))
        patterns = patterns.reshape(-1, len(droppable))
        candidates = torch.stack([fixed + sum(k * h / (1 - p) for k, h in zip(pat, droppable)) for pat in patterns])
        err = (candidates - node.unsqueeze(0)).flatten(2).abs().amax(-1)  # [patterns, B]
        best = err.argmin(0)
        assert (err.gather(0, best[None]) < 1e-12).all()  # every sample is one pattern exactly
        chosen = patterns[best]  # [B, edges]
        dropped += int((chosen == 0).sum())
        seen += chosen.numel()
    for h in hooks:
        h.remove()
    assert seen > 0
    # The drop rate is p (binomial, 5 standard deviations).
    assert abs(dropped / seen - p) < 5 * (p * (1 - p) / seen) ** 0.5
    cell.eval()
    assert torch.equal(cell(s0, s0, drop_prob=p), cell(s0, s0, drop_prob=0.0))
