"""Cell width/depth, random variants and loss-landscape probes (ICLR 2020 cell
analysis, Sec. 3.2, 4.2 and App. A.2), checked against the published figures
and against references computed independently."""
import argparse
import collections
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pynas.analysis import landscape, topology
from pynas.analysis.landscape import (filter_normalized_direction, gradient_variance, gradient_variance_surface,
                                      loss_contour, random_directions)
from pynas.analysis.topology import (cell_depth, cell_width, nb201_depth, nb201_width, random_connection_variants,
                                     random_operation_variants, variant_listing)
from pynas.genotype import AMOEBANET, DARTS_V2, NASNET, SNAS_MILD, SNAS_MILD_EDGE_ALL, Genotype, NB201Genotype
from pynas.nn import EvalNetwork
from pynas.nn.spaces import DARTS_WITHOUT_NONE, NB201
from pynas.select.evaluate import parse_genotype

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: on a shared machine, intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# The figures published for normal cells (Sec. 3.2, Figure 1; reference_genotypes.md).
PUBLISHED = [(DARTS_V2, 3.5, 3), (NASNET, 5.0, 2), (AMOEBANET, 4.0, 4), (SNAS_MILD, 4.0, 2),
             (SNAS_MILD_EDGE_ALL, 4.0, 2)]


# -- width and depth ----------------------------------------------------------------------


@pytest.mark.parametrize("genotype,width,depth", PUBLISHED,
                         ids=["DARTS_V2", "NASNet", "AmoebaNet", "SNAS_mild", "SNAS_mild_edge_all"])
def test_width_and_depth_of_published_normal_cells(genotype, width, depth):
    assert cell_width(genotype, "normal") == width
    assert cell_depth(genotype, "normal") == depth


def test_width_and_depth_of_a_chain_and_of_a_pruned_edge_all_cell():
    # 0,1 -> 2 -> 3 -> 4 -> 5 -> output: only node 2 touches the inputs; 5 connections deep.
    chain = Genotype([("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 2), ("avg_pool_3x3", 2),
                      ("sep_conv_3x3", 3), ("skip_connect", 3), ("max_pool_3x3", 4), ("skip_connect", 4)],
                     [5], DARTS_V2.reduce, DARTS_V2.reduce_concat)
    assert (cell_width(chain), cell_depth(chain)) == (1.0, 5)
    # Edge-all with node 3 absent: node 4 reads 3 (dropped, as EvalCell drops it) and 0; node 2 reads 0 and 1.
    pairs = [("skip_connect", 0), ("skip_connect", 1), ("none", 0), ("none", 1), ("none", 2),
             ("skip_connect", 0), ("none", 1), ("none", 2), ("sep_conv_3x3", 3)]
    pruned = Genotype(pairs, [2, 3, 4], DARTS_V2.reduce, DARTS_V2.reduce_concat)
    assert (cell_width(pruned), cell_depth(pruned)) == (2.0, 1 + 1)


# NAS-Bench-201 cells: node 0 the input, nodes 1 and 2 intermediate, node 3 the output. Width: each intermediate
# node with an input counts c·(edges from node 0)/(its edges); depth: edges on the longest path 0 -> 3.
NB201_CELLS = [
    # The cell. Node 1 <- 0: 1c; node 2 <- 0, 1: c/2. Longest path 0 -> 1 -> 2 -> 3.
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", 1.5, 3),
    # Every node reads only node 0: nodes 1 and 2 are 1c each (they feed nothing, but are computed); path 0 -> 3.
    ("|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|none~1|none~2|", 2.0, 1),
    # A chain: node 1 <- 0 is 1c, node 2 <- 1 is 0c; 0 -> 1 -> 2 -> 3.
    ("|nor_conv_1x1~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|", 1.0, 3),
    # Node 2 <- 1 only (0c) feeds nothing: the longest path to the output is 0 -> 1 -> 3.
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_1x1~1|none~2|", 1.0, 2),
    # Node 1 has no edge, so its edge 1 -> 2 carries nothing of the input, nor then node 2's edge 2 -> 3: no
    # intermediate node counts, and only 0 -> 3 is left (3 connections if the dead edges counted).
    ("|none~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|", 0.0, 1),
]


@pytest.mark.parametrize("text,width,depth", NB201_CELLS)
def test_width_and_depth_of_nb201_cells_by_hand(text, width, depth):
    genotype = NB201Genotype.parse(text)
    assert (nb201_width(genotype), nb201_depth(genotype)) == (width, depth)
    assert topology.topology(genotype) == {"cell": {"width": width, "depth": depth}}


def test_nb201_cell_without_a_path_to_the_output_is_refused():
    cut = NB201Genotype.parse("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|")
    with pytest.raises(ValueError, match="no path from the input node 0 to the output node 3"):
        nb201_depth(cut)


# -- random variants ----------------------------------------------------------------------


def _sources(genotype, cell_type="normal"):
    return [[j for _, j in edges] for edges in genotype.nodes(cell_type)]


def _ops(genotype, cell_type="normal"):
    return [[op for op, _ in edges] for edges in genotype.nodes(cell_type)]


@pytest.mark.parametrize("base", [DARTS_V2, NASNET, AMOEBANET, SNAS_MILD_EDGE_ALL], ids=["darts", "nasnet", "amoeba", "snas"])
def test_connection_variants_keep_each_nodes_operations_and_draw_valid_sources(base):
    variants = random_connection_variants(base, 20, seed=1)
    for v in variants:
        assert _ops(v) == _ops(base)
        assert all(0 <= j < k + 2 for k, sources in enumerate(_sources(v)) for j in sources)
        assert (v.reduce, v.reduce_concat) == (base.reduce, base.reduce_concat)  # default: normal cells only
    assert any(_sources(v) != _sources(base) for v in variants)


def test_connection_sources_are_uniform_over_predecessors_and_may_repeat():
    counts = collections.Counter()
    repeated = 0
    for v in random_connection_variants(DARTS_V2, 1000, seed=3):
        last = _sources(v)[-1]  # node 5: predecessors 0..4
        counts.update(last)
        repeated += last[0] == last[1]
    # 2000 draws over 5 sources: 400 each, standard deviation about 18.
    assert sorted(counts) == [0, 1, 2, 3, 4] and all(330 < c < 470 for c in counts.values())
    # Independent draws (App. A.2 draws each operation's source on its own): P(same) = 1/5.
    assert 140 < repeated < 260


def test_connection_variants_recompute_loose_end_concat_and_keep_darts_concat():
    for v in random_connection_variants(AMOEBANET, 30, seed=0, cell_type="both"):
        for cell_type in ("normal", "reduce"):
            used = {j for sources in _sources(v, cell_type) for j in sources}
            nodes = range(2, 2 + len(_sources(v, cell_type)))
            assert list(getattr(v, f"{cell_type}_concat")) == [i for i in nodes if i not in used]
    assert all(v.normal_concat == (2, 3, 4, 5) for v in random_connection_variants(DARTS_V2, 30, seed=0))


def test_operation_variants_keep_topology_and_draw_from_the_candidates():
    variants = random_operation_variants(SNAS_MILD_EDGE_ALL, 50, seed=2, cell_type="both")
    seen = set()
    for v in variants:
        for cell_type in ("normal", "reduce"):
            # Same pairs layout (edge-all, `none` in place), only the present ops change.
            base_pairs, pairs = getattr(SNAS_MILD_EDGE_ALL, cell_type), getattr(v, cell_type)
            assert [j for _, j in pairs] == [j for _, j in base_pairs]
            assert [op == "none" for op, _ in pairs] == [op == "none" for op, _ in base_pairs]
            assert getattr(v, f"{cell_type}_concat") == getattr(SNAS_MILD_EDGE_ALL, f"{cell_type}_concat")
            seen.update(op for op, _ in pairs if op != "none")
    assert seen == set(DARTS_WITHOUT_NONE.ops)
    assert all(v.reduce == DARTS_V2.reduce for v in random_operation_variants(DARTS_V2, 5, seed=0))
    only = random_operation_variants(DARTS_V2, 5, seed=0, ops=["skip_connect"])
    assert all(op == "skip_connect" for v in only for op, _ in v.normal)


def test_nb201_operation_variants_keep_the_none_edges_and_draw_nb201_operations():
    base = NB201Genotype.parse(NB201_CELLS[3][0])
    variants = random_operation_variants(base, 60, seed=4)
    assert random_operation_variants(base, 60, seed=4) == variants
    seen = set()
    for v in variants:
        assert [[j for _, j in node] for node in v.nodes] == [[j for _, j in node] for node in base.nodes]
        assert [[op == "none" for op, _ in node] for node in v.nodes] == \
            [[op == "none" for op, _ in node] for node in base.nodes]
        seen.update(op for node in v.nodes for op, _ in node if op != "none")
    assert seen == {"skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"} == set(NB201.ops) - {"none"}
    with pytest.raises(ValueError, match="no connections to redraw"):
        random_connection_variants(base, 2)
    with pytest.raises(ValueError, match="no reduction cell"):
        random_operation_variants(base, 2, cell_type="reduce")


def test_variants_are_seeded():
    for make in (random_connection_variants, random_operation_variants):
        assert make(NASNET, 6, seed=7, cell_type="both") == make(NASNET, 6, seed=7, cell_type="both")
        assert make(NASNET, 6, seed=7) != make(NASNET, 6, seed=8)


def test_variant_errors():
    with pytest.raises(ValueError, match="at least 1"):
        random_connection_variants(DARTS_V2, 0, seed=0)
    with pytest.raises(ValueError, match="'none'"):
        random_operation_variants(DARTS_V2, 2, seed=0, ops=["none", "skip_connect"])
    three_inputs = Genotype([("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1),
                             ("skip_connect", 2)], [2, 3], DARTS_V2.reduce, DARTS_V2.reduce_concat)
    with pytest.raises(ValueError, match="two inputs per node"):
        random_connection_variants(three_inputs, 2, seed=0)


def test_variant_listing_matches_width_and_depth():
    variants = random_connection_variants(DARTS_V2, 4, seed=0)
    for i, (v, entry) in enumerate(zip(variants, variant_listing(variants)), start=1):
        assert entry["index"] == i and parse_genotype(entry["genotype"]) == v
        assert entry["normal"] == {"width": cell_width(v), "depth": cell_depth(v)}


def test_variants_build_and_run_as_eval_networks():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    variants = (random_connection_variants(AMOEBANET, 2, seed=5, cell_type="both")
                + random_operation_variants(NASNET, 1, seed=5, cell_type="both"))
    for v in variants:
        net = EvalNetwork(v, C=4, num_classes=10, layers=3, auxiliary=False, in_channels=1).eval()
        logits, aux = net(x)
        assert logits.shape == (2, 10) and aux is None and torch.isfinite(logits).all()


# -- landscape probes ---------------------------------------------------------------------


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    with torch.no_grad():  # non-trivial BatchNorm state, which the probes must use and keep
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net


def _batches(n=3, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 4, 4, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def test_directions_are_filter_normalised_and_skip_one_dimensional_parameters():
    net = _tiny_net()
    direction = filter_normalized_direction(net, torch.Generator().manual_seed(0))
    for name, p in net.named_parameters():
        d = direction[name]
        assert d.shape == p.shape
        if p.dim() == 1:
            assert not d.any()
        else:
            for f in range(p.shape[0]):
                assert torch.allclose(d[f].norm(), p[f].norm(), rtol=1e-5)
            assert not torch.allclose(d / d.norm(), p / p.norm())  # random, not the weights themselves


def test_loss_contour_centre_is_the_unperturbed_loss_and_weights_are_restored():
    net, batches = _tiny_net().train(), _batches()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    surface = loss_contour(net, batches, steps=3, span=0.5, seed=4)
    assert net.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # bit for bit, buffers too
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    net.eval()
    with torch.no_grad():
        assert surface.centre == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-6)
        # A corner: α = coords[0] = -0.5, β = coords[2] = +0.5 along the seed's two directions.
        w1, w2 = random_directions(net, seed=4)
        for name, p in net.named_parameters():
            p.add_(-0.5 * w1[name] + 0.5 * w2[name])
        corner = F.cross_entropy(net(x), y).item()
    assert surface.values[0, 2].item() == pytest.approx(corner, rel=1e-5)
    assert surface.values[0, 2] != surface.values[2, 0]


def test_gradient_variance_matches_a_hand_derived_reference():
    torch.manual_seed(0)
    net = nn.Linear(6, 3).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
               for _ in range(5)]
    W, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    grads = []  # one per training instance (Sec. 4.2.2: Var over instances i of ∇f_i)
    for x, y in batches:
        for xi, yi in zip(x.numpy(), y.numpy()):
            z = W @ xi + b
            p = np.exp(z - z.max())
            p /= p.sum()
            r = p - np.eye(3)[yi]  # d(cross-entropy of instance i)/d logits
            grads.append(np.concatenate([np.outer(r, xi).ravel(), r]))
    expected = np.var(np.stack(grads), axis=0, ddof=1).sum()
    assert gradient_variance(net, batches) == pytest.approx(expected, rel=1e-10)
    assert net.weight.grad is None
    with pytest.raises(ValueError, match="at least 2 instances"):
        gradient_variance(net, [(batches[0][0][:1], batches[0][1][:1])])


def test_gradient_variance_surface_centre_and_restoration():
    net, batches = _tiny_net(), _batches()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    surface = gradient_variance_surface(net, batches, steps=3, span=0.5, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert surface.centre == pytest.approx(gradient_variance(net.eval(), batches), rel=1e-9)
    assert (surface.values > 0).all()
    with pytest.raises(ValueError, match="odd"):
        loss_contour(net, batches, steps=4)


# -- command line -------------------------------------------------------------------------


def _run(argv):
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    topology.register_commands(commands)
    landscape.register_commands(commands)
    args = parser.parse_args(argv)
    return args.func(args)


def test_topology_command(tmp_path, capsys):
    assert _run(["topology", "--genotype", "AmoebaNet", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "topology.json").read_text())
    assert data["normal"] == {"width": 4.0, "depth": 4}
    assert parse_genotype(data["genotype"]) == AMOEBANET
    assert "4c" in capsys.readouterr().out


def test_variants_command_writes_usable_genotype_files(tmp_path, capsys):
    out = tmp_path / "v"
    assert _run(["variants", "--genotype", "DARTS_V2", "--kind", "operations", "--n", "3", "--seed", "2",
                 "--out", str(out)]) == 0
    data = json.loads((out / "variants.json").read_text())
    expected = random_operation_variants(DARTS_V2, 3, seed=2)
    assert [parse_genotype(str(out / f"variant-{i}.txt")) for i in (1, 2, 3)] == expected
    assert [e["genotype"] for e in data["variants"]] == [str(v) for v in expected]
    assert data["base"]["normal"] == {"width": 3.5, "depth": 3}
    assert "C3" in capsys.readouterr().out


def test_topology_and_variants_commands_on_an_nb201_cell(tmp_path, capsys):
    text, width, depth = NB201_CELLS[0]
    assert _run(["topology", "--genotype", text, "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "topology.json").read_text())["cell"] == {"width": width, "depth": depth}
    assert "1.5c" in capsys.readouterr().out
    out = tmp_path / "v"
    assert _run(["variants", "--genotype", text, "--kind", "operations", "--n", "2", "--out", str(out)]) == 0
    expected = random_operation_variants(NB201Genotype.parse(text), 2, seed=0)
    assert [parse_genotype(str(out / f"variant-{i}.txt")) for i in (1, 2)] == expected
    data = json.loads((out / "variants.json").read_text())
    assert data["base"]["cell"] == {"width": width, "depth": depth} and data["cells"] == "cell"
    # Every NB201 edge runs 0..i-1 -> i, so no operation variant changes width or depth.
    assert all(entry["cell"] == {"width": width, "depth": depth} for entry in data["variants"])


def test_landscape_command_writes_plots_and_json(tmp_path, capsys):
    argv = ["landscape", "--genotype", "DARTS_V2", "--C", "4", "--layers", "3", "--steps", "3", "--batches", "2",
            "--batch-size", "16", "--out", str(tmp_path / "init")]
    assert _run(argv) == 0
    assert "initialisation" in capsys.readouterr().out
    for name in ("loss_contour.png", "gradient_variance.png"):
        assert (tmp_path / "init" / name).read_bytes()[:8] == PNG_MAGIC
    data = json.loads((tmp_path / "init" / "landscape.json").read_text())
    assert data["at_initialisation"] and len(data["loss"]) == 3 and len(data["gradient_variance"][0]) == 3
    assert data["centre"]["loss"] == data["loss"][1][1]

    # A checkpoint whose classifier outputs zeros: the centre loss is exactly log(10).
    torch.manual_seed(1)
    net = EvalNetwork(DARTS_V2, C=4, num_classes=10, layers=3, auxiliary=False, in_channels=1)
    nn.init.zeros_(net.classifier.weight)
    nn.init.zeros_(net.classifier.bias)
    with_head = {**net.state_dict(), "auxiliary_head.classifier.weight": torch.ones(10, 768)}  # trained with one
    for i, state in enumerate([{"model": with_head, "epoch": 3}, net.state_dict()]):
        torch.save(state, tmp_path / f"ckpt{i}.pt")
        out = tmp_path / f"ckpt{i}"
        assert _run(argv[:-1] + [str(out), "--checkpoint", str(tmp_path / f"ckpt{i}.pt")]) == 0
        assert json.loads((out / "landscape.json").read_text())["centre"]["loss"] == pytest.approx(math.log(10))


@pytest.mark.parametrize("argv,named", [
    (["topology", "--genotype", "NO_SUCH_CELL"], "--genotype"),
    (["variants", "--genotype", "DARTS_V2", "--n", "0"], "--n"),
    (["variants", "--genotype", "DARTS_V2", "--kind", "operations", "--ops", "skip_connect,warp"], "--ops"),
    (["variants", "--genotype", "/no/such/file.txt"], "--genotype"),
    (["variants", "--genotype", NB201_CELLS[0][0]], "--kind connections"),
    (["variants", "--genotype", NB201_CELLS[0][0], "--kind", "operations", "--cells", "reduce"], "--cells reduce"),
    (["topology", "--genotype", "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"], "no path"),
    (["landscape", "--genotype", "DARTS_V2", "--checkpoint", "/no/such/ckpt.pt"], "--checkpoint"),
    (["landscape", "--genotype", "DARTS_V2", "--batches", "0"], "--batches"),
    (["landscape", "--genotype", "DARTS_V2", "--steps", "4"], "--steps"),
    (["landscape", "--genotype", NB201_CELLS[0][0]], "NAS-Bench-201 cells are not supported"),
    (["landscape", "--genotype", "DARTS_V2", "--log-every", "0"], "--log-every"),
])
def test_bad_input_exits_2_naming_the_argument(argv, named, tmp_path, capsys):
    assert _run(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_network_is_refused(tmp_path, capsys):
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for name in ("other.pt", "junk.pt"):
        argv = ["landscape", "--genotype", "DARTS_V2", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path)]
        assert _run(argv) == 2
        assert "--checkpoint" in capsys.readouterr().err


def test_landscape_runs_on_any_search_dataset_without_augmentation(tmp_path):
    from test_data import write_cifar10

    from pynas.analysis.landscape import _probe_data

    write_cifar10(str(tmp_path / "data"), n=6)
    data, info = _probe_data("cifar10", str(tmp_path / "data"))
    assert info.in_channels == 3 and torch.equal(data[0][0], data[0][0])  # the same image every time
    argv = ["landscape", "--genotype", "DARTS_V2", "--dataset", "cifar10", "--data", str(tmp_path / "data"),
            "--C", "4", "--layers", "3", "--steps", "3", "--batches", "2", "--batch-size", "8",
            "--out", str(tmp_path / "out")]
    assert _run(argv) == 0
    assert json.loads((tmp_path / "out" / "landscape.json").read_text())["centre"]["gradient_variance"] > 0
