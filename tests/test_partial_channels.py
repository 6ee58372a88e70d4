"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation, against
independent references written from yuhuixu1993/PC-DARTS model_search.py (MixedOp, channel_shuffle, Cell,
genotype) and float64 eager computations of its formulas."""
import json

import pytest
import torch
import torch.nn.functional as F

from pynas.arch import Architecture
from pynas.cli import main
from pynas.genotype import Genotype, derive_genotype
from pynas.nn import MixedOp, SearchNetwork
from pynas.nn.partial import shuffled_concat
from pynas.search import DartsFirstOrder, SearchConfig, SingleLevel
from pynas.search.config import RunConfig
from test_search import _run, assert_same, full_state, small_digits  # noqa: F401 (a fixture)

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")


def pc_darts_channel_shuffle(x, groups):
    """PC-DARTS' channel_shuffle: view as (groups, C/groups), swap, flatten."""
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


def node_softmax(beta, steps, inputs=2):
    """PC-DARTS' weights2: softmax of β over each node's incoming edges (node k has inputs + k)."""
    out, start = [], 0
    for k in range(steps):
        out.append(F.softmax(beta[start:start + inputs + k], dim=-1))
        start += inputs + k
    return torch.cat(out)


def reference_edge(edge: MixedOp, h, w, K, scale=None):
    """PC-DARTS' MixedOp.forward, with pynas' operation modules (each with its own ReLU, none skipped);
    ``scale[k]`` multiplies operation k's term (1 in value: its gradient is the term's edge cost)."""
    part, rest = h[:, : h.size(1) // K], h[:, h.size(1) // K:]
    temp = sum(w[k] * (1 if scale is None else scale[k]) * edge.ops[edge._slot[k]](part) for k in edge.materialised)
    if temp.shape[2] != h.shape[2]:  # a reduction edge: the bypass is max-pooled 2x2, stride 2
        rest = F.max_pool2d(rest, 2, 2)
    return pc_darts_channel_shuffle(torch.cat([temp, rest], 1), K)


def reference_logits(net: SearchNetwork, x, K, scales=None):
    """The supernet's logits as PC-DARTS' Network/Cell compute them, in plain eager PyTorch (without β:
    every edge at weight 1); ``scales[l]``: ``[E, K]`` factors of cell l's terms (see reference_edge)."""
    s0 = s1 = net.stem(x)
    for l, cell in enumerate(net.cells):
        t = "reduce" if cell.reduction else "normal"
        w = F.softmax(net.arch.alphas[t], dim=-1)
        b = (node_softmax(net.arch.betas[t], cell.steps) if net.arch.betas is not None
             else torch.ones(cell.num_edges, dtype=x.dtype))
        states, offset = [cell.preprocess0(s0), cell.preprocess1(s1)], 0
        for _ in range(cell.steps):
            node = sum(b[offset + j] * reference_edge(cell.edges[offset + j], h, w[offset + j], K,
                                                      None if scales is None else scales[l][offset + j])
                       for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        s0, s1 = s1, torch.cat(states[-cell.steps:], 1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def network(K, C=8, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(dict(num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, channels_last=False), **kw)
    return SearchNetwork(C=C, partial_channels=K, **kw).to(dtype)


# -- the channel shuffle ---------------------------------------------------------------


def channel_shuffle(x, K):
    """pynas' shuffle of a whole tensor: its first C/K channels as the operated part."""
    return shuffled_concat(x[:, : x.size(1) // K], x[:, x.size(1) // K:], K)


@pytest.mark.parametrize("C,K", [(8, 4), (12, 4), (6, 2), (9, 3), (8, 8)])
def test_channel_shuffle_is_a_permutation_equal_to_pc_darts(C, K):
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    out = channel_shuffle(x, K)
    assert torch.equal(out, pc_darts_channel_shuffle(x, K))
    # A permutation of the channels: every input channel once, output i·K + g = input g·C/K + i.
    labels = torch.arange(C, dtype=torch.float64).view(1, C, 1, 1).expand(1, C, 2, 2)
    order = channel_shuffle(labels, K)[0, :, 0, 0].long()
    assert sorted(order.tolist()) == list(range(C))
    assert order.tolist() == [g * (C // K) + i for i in range(C // K) for g in range(K)]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_shuffled_concat_is_the_shuffle_of_the_concatenation(layout):
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64).contiguous(memory_format=layout)
    operated, bypassed = x[:, :3] * 2, x[:, 3:]
    out = shuffled_concat(operated, bypassed, 4)
    assert torch.equal(out, pc_darts_channel_shuffle(torch.cat([operated, bypassed], 1).contiguous(), 4))
    assert out.is_contiguous(memory_format=layout)
    a = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: shuffled_concat(a, b, 4), (a, b))
    with pytest.raises(ValueError, match="bypassed channels"):
        shuffled_concat(operated, bypassed[:, 1:], 4)


# -- the edge --------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_runs_its_operations_on_c_over_k_channels_and_bypasses_the_rest(stride):
    torch.manual_seed(0)
    C, K = 8, 4
    op = MixedOp(C, stride, OPS, partial_channels=K).double()
    convs = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.in_channels == C // K for m in convs)  # every operation's convolutions
    x = torch.randn(2, C, 6, 6, dtype=torch.float64)
    w = torch.randn(len(OPS), dtype=torch.float64).softmax(-1)
    out = op(x, w)
    assert out.shape == (2, C, 6 // stride, 6 // stride)
    torch.testing.assert_close(out, reference_edge(op, x, w, K), rtol=1e-12, atol=1e-12)
    # The bypassed channels, by the shuffle's placement (channels not ≡ 0 mod K), are the last C − C/K input
    # channels unchanged (stride 1) or max-pooled 2x2 with stride 2 (a reduction edge, as PC-DARTS' `self.mp`).
    rest = x[:, C // K:]
    expected = rest if stride == 1 else F.max_pool2d(rest, 2, 2)
    placed = out.view(2, C // K, K, *out.shape[2:])[:, :, 1:].transpose(1, 2).reshape(expected.shape)
    assert torch.equal(placed, expected)


def test_a_reduction_edge_on_an_odd_size_pools_the_bypass_to_the_operations_size():
    # PC-DARTS' MaxPool2d(2, 2) floors 7 to 3 where the stride-2 operations give 4 (its cat would fail);
    # pynas pools with ceil_mode, the same pooling on even sizes.
    op = MixedOp(8, 2, OPS, partial_channels=2).double()
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    out = op(x, torch.full((len(OPS),), 1 / len(OPS), dtype=torch.float64))
    assert out.shape == (1, 8, 4, 4)
    bypass = out.view(1, 4, 2, 4, 4)[:, :, 1]
    assert torch.equal(bypass, F.max_pool2d(x[:, 4:], 2, 2, ceil_mode=True))


# -- the supernet ----------------------------------------------------------------------


def test_k1_is_the_plain_supernet_same_weights_same_output():
    torch.manual_seed(3)
    plain = SearchNetwork(C=8, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1,
                          channels_last=False).double()
    k1 = network(1, seed=3)
    assert k1.arch.betas is None and k1.arch.edge_weights("normal") is None
    a, b = plain.state_dict(), k1.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(plain(x), k1(x))
    # K > 1 draws β after α: the same α as the plain supernet of the seed.
    pc = network(2, seed=3)
    assert all(torch.equal(pc.arch.alphas[t], plain.arch.alphas[t]) for t in ("normal", "reduce"))


@pytest.mark.parametrize("K,C", [(2, 4), (4, 8)])
def test_the_edge_normalised_forward_and_gradients_equal_pc_darts_formula_in_float64(K, C):
    net = network(K, C=C, seed=1)
    with torch.no_grad():  # β and α away from uniform, so that a wrong normalisation shows
        for t in ("normal", "reduce"):
            net.arch.betas[t].copy_(torch.randn(net.arch.num_edges, dtype=torch.float64))
            net.arch.alphas[t].copy_(torch.randn_like(net.arch.alphas[t]))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ours, ref = net(x), reference_logits(net, x, K)
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    params = list(net.arch_parameters()) + list(net.weight_parameters())
    g_ours = torch.autograd.grad(ours.square().sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    names = [n for n, _ in net.arch.named_parameters()] + [n for n, p in net.named_parameters()
                                                           if not n.startswith("arch.")]
    for name, a, b in zip(names, g_ours, g_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    assert [n for n, _ in net.arch.named_parameters()] == ["alphas.normal", "alphas.reduce", "betas.normal",
                                                           "betas.reduce"]


def test_partial_channels_without_edge_normalisation_is_the_papers_ablation():
    torch.manual_seed(4)
    arch = Architecture("darts", 5)
    net = network(2, C=4, seed=4, arch=arch)
    assert net.arch.betas is None
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x), reference_logits(net, x, 2), rtol=1e-10, atol=1e-12)


def test_edge_costs_of_a_partial_channel_cell_are_the_gradients_of_each_terms_scale():
    # The wiring paper's cost w_k·Σ ∂L/∂X ⊙ op_k(x) (Eq. 4-5), here of the term β_e·w_ek·op_ek(x[:C/K]) that
    # enters the node: brute force, the derivative of the loss by a factor on that term at 1.
    from pynas.analysis.edge_cost import collect_edge_costs

    net = network(2, C=4, seed=5)
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.arch.betas[t].copy_(torch.randn(5, dtype=torch.float64))
    x, y = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1])
    costs = collect_edge_costs(net, x, y).cells
    scales = [torch.ones(5, len(OPS), dtype=torch.float64, requires_grad=True) for _ in net.cells]
    loss = F.cross_entropy(reference_logits(net, x, 2, scales), y)
    expected = torch.stack(torch.autograd.grad(loss, scales))
    assert costs.abs().sum() > 0
    torch.testing.assert_close(costs, expected, rtol=1e-8, atol=1e-12)


def test_a_removed_edge_passes_nothing_and_beta_renormalises_over_the_rest():
    net = network(2, C=4, seed=2)
    with torch.no_grad():
        net.arch.betas["normal"].copy_(torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], dtype=torch.float64))
    net.arch.remove_edge("normal", 3)  # node 3's edge from node 2
    edge = net.arch.edge_weights("normal")
    beta = net.arch.betas["normal"].detach()
    expected = torch.cat([beta[:2].softmax(-1), torch.cat([beta[2:3], beta[4:5]]).softmax(-1)])
    torch.testing.assert_close(edge[[0, 1, 2, 4]], expected, rtol=1e-12, atol=0)
    assert edge[3] == 0
    # The normal cells' forward equals the reference with that edge's contribution (operations and bypass) gone.
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cell = net.cells[0]
    s = net.stem(x)
    weights = net.arch.weights("normal")
    ours = cell(s, s, weights.weights, weights.active, weights.edge)
    states = [cell.preprocess0(s), cell.preprocess1(s)]
    w = F.softmax(net.arch.alphas["normal"], -1)
    states.append(sum(edge[j] * reference_edge(cell.edges[j], h, w[j], 2) for j, h in enumerate(states)))
    states.append(sum(edge[2 + j] * reference_edge(cell.edges[2 + j], h, w[2 + j], 2)
                      for j, h in enumerate(states) if j != 1))
    torch.testing.assert_close(ours, torch.cat(states[2:], 1), rtol=1e-10, atol=1e-12)


def test_per_sample_gumbel_weights_run_with_partial_channels():
    net = network(2, C=4, relaxation="gumbel", sample_per="sample", generator=torch.Generator().manual_seed(0))
    out = net(torch.randn(3, 1, 8, 8, dtype=torch.float64))
    assert out.shape == (3, 3) and torch.isfinite(out).all()


# -- derivation ------------------------------------------------------------------------


def pc_darts_genotype_pairs(alpha, beta, ops, steps):
    """PC-DARTS' genotype()._parse: W = softmax(α)·softmax-per-node(β); per node the two inputs with the
    largest non-`none` W, each with its largest non-`none` operation."""
    W = F.softmax(alpha, dim=-1) * node_softmax(beta, steps).unsqueeze(-1)
    none = ops.index("none")
    pairs, start = [], 0
    for i in range(steps):
        n = i + 2
        rows = W[start:start + n]
        best = lambda j: max(rows[j][k] for k in range(len(ops)) if k != none)
        for j in sorted(range(n), key=lambda j: -best(j))[:2]:
            k_best = max((k for k in range(len(ops)) if k != none), key=lambda k: rows[j][k])
            pairs.append((ops[k_best], j))
        start += n
    return pairs


def test_derivation_ranks_edges_by_softmax_alpha_times_softmax_beta():
    arch = Architecture("darts", 14, edge_normalisation=True)
    # A hand case: node 2's edge 0 has the larger α but β prefers edge 1 enough to flip the order.
    with torch.no_grad():
        for t in ("normal", "reduce"):
            arch.alphas[t].zero_()
            arch.alphas[t][0, 4] = 1.0  # edge 0->2: sep_conv_3x3 strongest by α
            arch.alphas[t][1, 5] = 0.5
            arch.betas[t].zero_()
            arch.betas[t][1] = 2.0
    g = derive_genotype(arch)
    assert g.normal[0] == ("sep_conv_5x5", 1)  # by α alone, ('sep_conv_3x3', 0) would lead
    for seed in range(20):
        torch.manual_seed(seed)
        with torch.no_grad():
            for t in ("normal", "reduce"):
                arch.alphas[t].copy_(torch.randn(14, 8))
                arch.betas[t].copy_(2 * torch.randn(14))
        g = derive_genotype(arch)
        for t in ("normal", "reduce"):
            want = pc_darts_genotype_pairs(arch.alphas[t].detach().double(), arch.betas[t].detach().double(),
                                           list(arch.ops), 4)
            assert list(getattr(g, t)) == want, (seed, t)


# -- search: β is α's companion --------------------------------------------------------


def batch(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("strategy_cls", [DartsFirstOrder, SingleLevel])
def test_beta_trains_with_alpha_after_the_weights_only_warmup(strategy_cls):
    net = network(2, C=4, dtype=torch.float32)
    strategy = strategy_cls(net, SearchConfig(epochs=2, warmup_epochs=1, a_lr=0.1), 1)
    assert {id(p) for p in strategy.alphas} == {id(p) for p in net.arch.parameters()}
    assert {id(p) for p in strategy.a_opt.param_groups[0]["params"]} >= {id(b) for b in net.arch.betas.values()}
    before = [p.detach().clone() for p in net.arch_parameters()]
    w_before = [p.detach().clone() for p in net.weight_parameters()]
    strategy.step(batch(0), batch(1))  # epoch 0: the warmup, weights only (PC-DARTS: `if epoch >= 15`)
    assert all(torch.equal(a, b) for a, b in zip(before, net.arch_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(w_before, net.weight_parameters()))
    strategy.epoch_end()
    strategy.step(batch(2), batch(3))
    assert all(not torch.equal(b, net.arch.betas[t]) for b, t in zip(before[2:], ("normal", "reduce")))
    assert all(not torch.equal(a, net.arch.alphas[t]) for a, t in zip(before[:2], ("normal", "reduce")))


@pytest.mark.parametrize("method", ["darts", "snas"])
def test_a_resumed_partial_channel_run_continues_with_beta_and_its_optimiser_state(tmp_path, small_digits, method):
    import shutil

    kw = dict(method=method, batch_size=16, partial_channels=2, warmup_epochs=1)
    full = _run(tmp_path, "full", 3, **kw)
    full._epoch()
    assert "arch.betas.normal" in full.model.state_dict()
    shutil.copytree(tmp_path / "full", tmp_path / "killed")
    full.run()
    resumed = _run(tmp_path, "killed", 3, resume=True)
    assert resumed.epoch == 1 and resumed.strategy.epochs_done == 1
    resumed.run()
    assert_same(full_state(full), full_state(resumed))
    assert len(full.strategy.a_opt.state) == 4  # α and β of both cell types, stepped after the warmup
    assert (tmp_path / "killed" / "genotype.txt").read_text() == (tmp_path / "full" / "genotype.txt").read_text()


@pytest.mark.parametrize("method", ["darts", "darts-2nd", "single-level", "snas", "fixed", "sdarts-rs", "sgas"])
def test_every_soft_method_searches_with_partial_channels(tmp_path, small_digits, method):
    kw = dict(first_decision=1, decision_freq=1) if method == "sgas" else {}
    run = _run(tmp_path, method, 1, method=method, batch_size=16, partial_channels=2, **kw)
    betas = {t: b.detach().clone() for t, b in run.model.arch.betas.items()}
    Genotype.parse(run.run())
    for t, b in betas.items():
        moved = not torch.equal(b, run.model.arch.betas[t])
        assert moved == (method != "fixed"), t  # fixed: α and β held at 0 (uniform)
    if method == "fixed":
        assert all(not b.any() for b in run.model.arch.betas.values())


def test_pynas_search_with_partial_channels_writes_a_genotype_ranked_with_beta(tmp_path, small_digits, capsys):
    out = tmp_path / "run"
    argv = ["search", "--partial-channels", "2", "--epochs", "1", "--C", "4", "--layers", "3", "--steps", "2",
            "--batch-size", "16", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "edge weights softmax(β)" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["partial_channels"] == 2
    genotype = Genotype.parse((out / "genotype.txt").read_text())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # The genotype is the PC-DARTS rule on the run's own α and β (the metrics hold softmax(α) and softmax(β)).
    from pynas.io import load_checkpoint
    state = load_checkpoint(str(out / "checkpoint.pt"), "search", {})["model"]
    ops = list(SearchNetwork(C=4, layers=3, steps=2, multiplier=2).arch.ops)
    for t in ("normal", "reduce"):
        want = pc_darts_genotype_pairs(state[f"arch.alphas.{t}"].double(), state[f"arch.betas.{t}"].double(), ops, 2)
        assert list(getattr(genotype, t)) == want
        torch.testing.assert_close(torch.tensor(record["arch"][t]["edge_weights"], dtype=torch.float64),
                                   node_softmax(state[f"arch.betas.{t}"].double(), 2), rtol=1e-6, atol=1e-7)
    assert record["genotype"] == str(genotype)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    (dict(partial_channels=3, C=8), "--partial-channels 3 must divide"),
    (dict(partial_channels=0), "--partial-channels must be an integer >= 1"),
    (dict(partial_channels=-2), "--partial-channels must be an integer >= 1"),
    (dict(partial_channels=2, method="gdas"), "--partial-channels applies to the soft methods"),
    (dict(partial_channels=2, method="dsnas"), "--partial-channels applies to the soft methods"),
    (dict(partial_channels=2, method="darts", relaxation="gumbel_hard"), "--partial-channels applies to the soft"),
    (dict(partial_channels=2, space="nb201"), "--partial-channels needs a DARTS-style space"),
    (dict(partial_channels=2, method="snas", constraint="mild"), "--partial-channels with --constraint"),
    (dict(partial_channels=4, C=16, channels_last=True), "--partial-channels >= 8"),
])
def test_bad_partial_channels_are_refused_naming_the_option(kw, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw).validate()


def test_the_command_line_refuses_a_k_that_does_not_divide_c(capsys):
    assert main(["search", "--partial-channels", "3", "--C", "8", "--epochs", "1"]) == 2
    assert "--partial-channels 3 must divide the channels C = 8" in capsys.readouterr().err


def test_modules_refuse_a_bad_k_naming_it():
    with pytest.raises(ValueError, match="`partial_channels` 3 must divide"):
        SearchNetwork(C=8, partial_channels=3)
    with pytest.raises(ValueError, match="`partial_channels` must be an integer >= 1"):
        MixedOp(8, 1, OPS, partial_channels=0)


def test_the_pc_darts_preset_is_the_codes_search_and_reaches_the_optimisers(tmp_path, small_digits):
    from pynas.search.presets import PRESETS

    # Typed from yuhuixu1993/PC-DARTS (model_search.py `self.k = 4`; train_search.py's defaults and `epoch>=15`).
    preset = PRESETS["pc-darts-cifar10"]
    assert (preset["partial_channels"], preset["batch_size"], preset["w_lr"], preset["w_lr_min"], preset["a_lr"],
            preset["warmup_epochs"], preset["method"], preset["epochs"]) == (4, 256, 0.1, 0.0, 6e-4, 15, "darts", 50)
    out = tmp_path / "preset"
    assert main(["search", "--preset", "pc-darts-cifar10", "--dataset", "digits", "--epochs", "1", "--C", "4",
                 "--layers", "3", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["partial_channels"], config["warmup_epochs"], config["batch_size"]) == (4, 15, 256)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    a_group, w_group = state["strategy"]["a_opt"]["param_groups"][0], state["strategy"]["w_opt"]["param_groups"][0]
    assert (a_group["lr"], tuple(a_group["betas"]), a_group["weight_decay"]) == (6e-4, (0.5, 0.999), 1e-3)
    assert len(a_group["params"]) == 4  # α and β of both cell types
    assert state["strategy"]["a_opt"]["state"] == {}  # within the 15 weights-only epochs: no α or β step
    assert (w_group["initial_lr"], w_group["lr"]) == (0.1, 0.0)  # cosine from 0.1 to 0 over the 1 epoch
