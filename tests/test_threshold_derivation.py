"""FairDARTS' threshold derivation (``threshold_sparse``, xiaomi-automl/FairDARTS fairdarts/utils.py:161-184):
per node the two incoming edges with the largest max σ(α), each kept with its argmax only if that weight is
>= the threshold; and child networks whose nodes keep 0, 1 or 2 inputs."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from pynas.arch import Architecture
from pynas.cli import main
from pynas.genotype import Genotype, derive_cell, derive_genotype
from pynas.nn import EvalNetwork
from pynas.nn.spaces import DARTS_OPS, DARTS_WITHOUT_NONE
from pynas.select.rules import select_by_rule

OPS = DARTS_OPS[1:]  # FairDARTS' PRIMITIVES: DARTS' without `none`
LOW = 0.1  # σ of the operations a row does not single out


def weights_of(rows, ops=OPS, dtype=torch.float64):
    """[14, K] σ weights: each row LOW except {op: weight}; a float instead of a dict fills the whole row."""
    w = torch.full((len(rows), len(ops)), LOW, dtype=dtype)
    for e, row in enumerate(rows):
        if isinstance(row, float):
            w[e] = row
        else:
            for op, value in row.items():
                w[e, ops.index(op)] = value
    return w


# Edges in node order: node 2 <- 0, 1; node 3 <- 0, 1, 2; node 4 <- 0..3; node 5 <- 0..4.
NORMAL_ROWS = [
    {"sep_conv_3x3": 0.9}, {"skip_connect": 0.95},                       # node 2: both pass
    {"avg_pool_3x3": 0.85}, {"max_pool_3x3": 0.85 - 1e-9}, {},          # node 3: exactly 0.85 passes, just below not
    {"dil_conv_3x3": 0.97}, 0.9, {"sep_conv_5x5": 0.91}, {},             # node 4: edge 1 passes but ranks third
    {"sep_conv_3x3": 0.8}, {"dil_conv_5x5": 0.84}, {}, {}, {"skip_connect": 0.6},  # node 5: none passes
]
NORMAL_PAIRS = [("sep_conv_3x3", 0), ("skip_connect", 1),
                ("avg_pool_3x3", 0), ("none", 1), ("none", 2),
                ("dil_conv_3x3", 0), ("none", 1), ("sep_conv_5x5", 2), ("none", 3),
                ("none", 0), ("none", 1), ("none", 2), ("none", 3), ("none", 4)]
# Only node 4 lives: node 3's one edge comes from node 2, which has none.
REDUCE_ROWS = [{}, {},
               {}, {}, {"skip_connect": 0.95},
               {}, {"max_pool_3x3": 0.9}, {}, {},
               {}, {}, {}, {}, {}]
REDUCE_PAIRS = [("none", 0), ("none", 1),
                ("none", 0), ("none", 1), ("skip_connect", 2),
                ("none", 0), ("max_pool_3x3", 1), ("none", 2), ("none", 3),
                ("none", 0), ("none", 1), ("none", 2), ("none", 3), ("none", 4)]
GENOTYPE = Genotype(NORMAL_PAIRS, [2, 3, 4, 5], REDUCE_PAIRS, [2, 3, 4, 5])


def test_threshold_rule_keeps_the_top_two_edges_that_reach_the_threshold():
    pairs, concat = derive_cell(weights_of(NORMAL_ROWS), OPS, "threshold", threshold=0.85)
    assert pairs == NORMAL_PAIRS and concat == [2, 3, 4, 5]
    # Node 4's edge 1 has the largest sum of σ but not the largest max: ranked third, it is dropped.
    # A lower threshold keeps node 3's second edge and node 5's two strongest; a higher one keeps less.
    pairs, _ = derive_cell(weights_of(NORMAL_ROWS), OPS, "threshold", threshold=0.8)
    assert pairs[2:5] == [("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("none", 2)]
    assert pairs[9:] == [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("none", 2), ("none", 3), ("none", 4)]
    pairs, _ = derive_cell(weights_of(NORMAL_ROWS), OPS, "threshold", threshold=0.96)
    assert [p for p in pairs if p[0] != "none"] == [("dil_conv_3x3", 0)]


def test_ties_go_to_the_lower_input_and_the_earlier_operation():
    # FairDARTS sorts edges stably by -max and takes the first strict maximum of the operations.
    rows = [{"max_pool_3x3": 0.9, "sep_conv_3x3": 0.9}, {"skip_connect": 0.9},
            {"dil_conv_5x5": 0.9}, {"avg_pool_3x3": 0.9}, {"sep_conv_5x5": 0.9}]
    pairs, concat = derive_cell(weights_of(rows), OPS, "threshold", threshold=0.85)
    assert pairs == [("max_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 0), ("avg_pool_3x3", 1),
                     ("none", 2)]
    assert concat == [2, 3]


def test_none_and_masked_entries_are_never_ranked_or_chosen():
    # In DARTS' space (with `none`): a high σ(none) neither ranks an edge nor is its operation.
    rows = [{"none": 0.99, "sep_conv_3x3": 0.9}, {"none": 0.99, "skip_connect": 0.5},
            {"none": 0.99}, {"dil_conv_3x3": 0.95, "max_pool_3x3": 0.9}, {"avg_pool_3x3": 0.88}]
    w = weights_of(rows, DARTS_OPS)
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[3, DARTS_OPS.index("dil_conv_3x3")] = False  # removed: edge 3 ranks by its max_pool_3x3
    pairs, _ = derive_cell(w, DARTS_OPS, "threshold", mask=mask, threshold=0.85)
    assert pairs == [("sep_conv_3x3", 0), ("none", 1), ("none", 0), ("max_pool_3x3", 1), ("avg_pool_3x3", 2)]


def test_derive_genotype_reads_sigmoid_of_alpha():
    arch = Architecture(DARTS_WITHOUT_NONE, 14, relaxation="sigmoid")
    logit = lambda p: math.log(p / (1 - p))
    normal = [dict(r) if isinstance(r, dict) else r for r in NORMAL_ROWS]
    normal[2], normal[3] = {"avg_pool_3x3": 0.88}, {"max_pool_3x3": 0.8}  # float32 σ: clear of the boundary
    with torch.no_grad():
        for cell_type, rows in (("normal", normal), ("reduce", REDUCE_ROWS)):
            arch.alphas[cell_type].copy_(weights_of(rows).apply_(logit))
    g = derive_genotype(arch, "threshold", threshold=0.85)
    assert g == GENOTYPE
    assert Genotype.parse(str(g)) == g and g.form("normal") == g.form("reduce") == "edge-all"
    assert derive_genotype(arch, "threshold", threshold=0.99) == Genotype(
        [("none", j) for k in range(4) for j in range(k + 2)], [2, 3, 4, 5],
        [("none", j) for k in range(4) for j in range(k + 2)], [2, 3, 4, 5])


def test_child_network_concatenates_only_the_live_nodes():
    # Normal cells concatenate nodes 2, 3, 4 (3C channels); reduction cells node 4 alone (1 x 2C).
    torch.manual_seed(0)
    C, layers = 4, 5
    model = EvalNetwork(GENOTYPE, C=C, num_classes=10, layers=layers, auxiliary=False,
                        in_channels=1, drop_path_prob=0.2).double()
    expected = [(3 * 4, 8), (1 * 8, 4), (3 * 8, 4), (1 * 16, 2), (3 * 16, 2)]  # (channels, size) of cells 0..4
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:3]))) for cell in model.cells]
    logits, aux = model(torch.randn(3, 1, 8, 8, dtype=torch.float64))
    for h in hooks:
        h.remove()
    assert shapes == expected and logits.shape == (3, 10) and aux is None
    assert [cell.concat for cell in model.cells] == [[2, 3, 4], [4], [2, 3, 4], [4], [2, 3, 4]]
    logits.square().sum().backward()
    grads = [p.grad for p in model.classifier.parameters()] + [p.grad for p in model.stem.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_a_cell_without_any_kept_edge_is_a_clear_error(tmp_path, capsys):
    empty = [("none", j) for k in range(4) for j in range(k + 2)]
    with pytest.raises(ValueError, match="reduce cell has no output"):
        EvalNetwork(Genotype(NORMAL_PAIRS, [2, 3, 4, 5], empty, [2, 3, 4, 5]), C=4, layers=3, auxiliary=False)
    text = str(Genotype(empty, [2, 3, 4, 5], REDUCE_PAIRS, [2, 3, 4, 5]))
    assert main(["train", "--genotype", text, "--C", "4", "--layers", "3", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "normal cell has no output" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_pynas_train_trains_a_threshold_cell(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--genotype", str(GENOTYPE), "--C", "4", "--layers", "3", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert Genotype.parse(result["genotype"]) == GENOTYPE
    assert 0.0 <= result["test_acc"] <= 1.0 and result["params_M"] > 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_loss"])


@pytest.mark.parametrize("threshold", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan"), float("inf"), True, "0.85", None])
def test_bad_thresholds_are_refused(threshold):
    with pytest.raises(ValueError, match="`threshold`"):
        derive_cell(weights_of(NORMAL_ROWS), OPS, "threshold", threshold=threshold)
    arch = Architecture(DARTS_WITHOUT_NONE, 14, relaxation="sigmoid")
    with pytest.raises(ValueError, match="`threshold`"):
        derive_genotype(arch, "threshold", threshold=threshold)


def test_rule_names_list_threshold():
    with pytest.raises(ValueError, match="'threshold'"):
        derive_cell(weights_of(NORMAL_ROWS), OPS, "fair")

    supernet = SimpleNamespace(arch=Architecture(DARTS_WITHOUT_NONE, 14, relaxation="sigmoid"))  # what it reads
    with torch.no_grad():
        supernet.arch.alphas["normal"].fill_(5.0)  # σ ≈ 0.993 everywhere: ties keep inputs 0 and 1 of each node
        supernet.arch.alphas["reduce"].fill_(-5.0)
    text = select_by_rule(supernet, "threshold", threshold=0.9)
    g = Genotype.parse(text)
    assert [sorted(j for _, j in node) for node in g.nodes("normal")] == [[0, 1]] * 4
    assert [len(node) for node in g.nodes("reduce")] == [0, 0, 0, 0]
