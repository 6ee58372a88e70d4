"""DARTS- (Chu et al., ICLR 2021): the auxiliary skip connection on every edge of the supernet,
edge = Σ_k softmax(α)_k·op_k(x) + β·aux(x), aux the identity at stride 1 and a factorized reduce at
stride 2 (Meituan-AutoML/DARTS- src/search/model_search.py:17-45), against float64 references written
here from that formula, and against the eager supernet of pynas.bench.search."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pynas.analysis.edge_cost import CostRecorder
from pynas.bench.search import EagerSupernet, fused_gumbel
from pynas.nn import SearchCell, SearchNetwork, minimal_cell_network
from pynas.nn.ops import FactorizedReduce, plain_forms
from test_partial_channels import node_softmax, pc_darts_channel_shuffle as channel_shuffle  # PC-DARTS written out

RTOL, ATOL = 1e-7, 1e-10


def network(seed=0, C=4, K=1, aux_skip=True, **kw):
    """Three cells (normal, reduce, reduce), two nodes each, on 1-channel 8x8 images, in float64."""
    torch.manual_seed(seed)
    kw = dict(dict(num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, channels_last=False), **kw)
    return SearchNetwork(C=C, partial_channels=K, aux_skip=aux_skip, **kw).to(torch.float64)


def batch(seed=1, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def factorized_reduce(module: FactorizedReduce, x):
    """DARTS' FactorizedReduce written out: ReLU, two 1x1 stride-2 convs (the second on the input
    shifted by one pixel), concatenated, BatchNorm without affine (batch statistics in training,
    running ones in evaluation). Even sizes only."""
    r = F.relu(x)
    y = torch.cat([F.conv2d(r, module.conv_1.weight, stride=2), F.conv2d(r[:, :, 1:, 1:], module.conv_2.weight,
                                                                        stride=2)], dim=1)
    bn = module.bn
    if bn.training:
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)


def aux_reference(module, x):
    return x if isinstance(module, nn.Identity) else factorized_reduce(module, x)




def reference_edge(cell, e, h, w, beta, K=1, scale=None):
    """Edge e: Σ_k w_k·op_k(x) + β·aux(x) over the operated channels x = h[:C/K] (all of them at
    K = 1), `none` as nothing; with K > 1 the rest bypasses (max-pooled on a reduction edge) and
    joins through PC-DARTS' shuffle. ``scale[k]`` multiplies operation k's term (1 in value)."""
    edge = cell.edges[e]
    part, rest = h[:, : h.size(1) // K], h[:, h.size(1) // K:]
    temp = sum(w[k] * (1 if scale is None else scale[k]) * edge.ops[edge._slot[k]](part) for k in edge.materialised)
    temp = temp + beta * aux_reference(cell.aux_skips[e], part)
    if K == 1:
        return temp
    if temp.shape[2] != h.shape[2]:
        rest = F.max_pool2d(rest, 2, 2)
    return channel_shuffle(torch.cat([temp, rest], 1), K)


def reference_cell(cell, s0, s1, w, beta, K=1, edge_weights=None, scales=None):
    """The cell as DARTS-' Cell computes it: each node the plain sum of its edges (β̂_e times each
    with PC-DARTS' edge normalisation); the output concatenates the nodes."""
    states, e = [cell.preprocess0(s0), cell.preprocess1(s1)], 0
    for _ in range(cell.steps):
        node = 0
        for h in states:
            out = reference_edge(cell, e, h, w[e], beta, K, None if scales is None else scales[e])
            node = node + (out if edge_weights is None else edge_weights[e] * out)
            e += 1
        states.append(node)
    return torch.cat(states[2:], dim=1)


def reference_logits(net, x, K=1, scales=None):
    with plain_forms():
        beta = net.aux_weight
        s0 = s1 = net.stem(x)
        for l, cell in enumerate(net.cells):
            t = "reduce" if cell.reduction else "normal"
            edge_weights = None if net.arch.betas is None else node_softmax(net.arch.betas[t], cell.steps)
            w = F.softmax(net.arch.alphas[t], dim=-1)
            s0, s1 = s1, reference_cell(cell, s0, s1, w, beta, K, edge_weights, None if scales is None else scales[l])
        return net.classifier(net.global_pooling(s1).flatten(1))


def gradients(net, forward, x, y):
    """The loss of ``forward(x)`` and the gradients it leaves on the weights and on α (and β̂)."""
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(x), y)
    loss.backward()
    grads = lambda params: [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    return loss.detach(), grads(net.weight_parameters()), grads(net.arch_parameters())


def assert_same_gradients(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=RTOL, atol=ATOL)
    assert len(a[1]) == len(b[1]) and len(a[2]) == len(b[2])
    for ga, gb in zip(a[1] + a[2], b[1] + b[2]):
        torch.testing.assert_close(ga, gb, rtol=RTOL, atol=ATOL)


# -- structure -------------------------------------------------------------------------


def test_each_edge_has_an_identity_aux_at_stride_1_and_a_factorized_reduce_at_stride_2():
    net = network()
    for cell, C in zip(net.cells, (4, 8, 16)):  # C = 4 doubled at each reduction
        assert len(cell.aux_skips) == cell.num_edges
        for (j, _), edge, aux in zip(cell.edge_list, cell.edges, cell.aux_skips):
            # DARTS-: every reduction-cell edge from a cell input has stride 2 and a factorized-reduce aux.
            stride2 = cell.reduction and j < 2
            assert edge.stride == (2 if stride2 else 1)
            if stride2:
                assert isinstance(aux, FactorizedReduce) and aux.bn.affine is False
                assert (aux.conv_1.in_channels, aux.conv_1.out_channels + aux.conv_2.out_channels) == (C, C)
            else:
                assert isinstance(aux, nn.Identity)


def test_the_aux_is_a_weight_not_part_of_alpha():
    net, plain = network(), network(aux_skip=False)
    assert [p.shape for p in net.arch_parameters()] == [p.shape for p in plain.arch_parameters()]
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    aux = [p for cell in net.cells for p in cell.aux_skips.parameters()]
    assert aux and all(id(p) in weights and id(p) not in arch for p in aux)
    assert len(weights) == len({id(p) for p in plain.weight_parameters()}) + len(aux)


# -- forward against the formula ----------------------------------------------------------


@pytest.mark.parametrize("cell_index", [0, 1, 2])  # normal (identity aux), reduce (factorized reduce), reduce after reduce
@pytest.mark.parametrize("training", [True, False])
def test_a_cell_is_the_sum_of_softmax_weighted_ops_plus_beta_times_aux(cell_index, training):
    net = network()
    x, _ = batch()
    net(x)  # running statistics away from their initial values, for evaluation
    net.train(training)
    with torch.no_grad():
        s = net.stem(x)
        s0, s1 = s, s
        for cell in net.cells[:cell_index]:
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, F.softmax(net.arch.alphas[t], -1), aux_weight=net.aux_weight)
        cell = net.cells[cell_index]
        w = F.softmax(net.arch.alphas["reduce" if cell.reduction else "normal"], -1)
        beta = torch.tensor(0.37, dtype=torch.float64)
        fused = cell(s0, s1, w, aux_weight=beta)
        with plain_forms():
            expected = reference_cell(cell, s0, s1, w, beta)
    torch.testing.assert_close(fused, expected, rtol=RTOL, atol=ATOL)
    # The aux is there: without it the cell differs.
    assert not torch.allclose(fused, cell(s0, s1, w, aux_weight=beta * 0), rtol=1e-3)


def test_beta_zero_is_the_network_without_aux():
    plain, net = network(aux_skip=False), network(seed=5)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and "aux_weight" in missing and all("aux_skips" in k or k == "aux_weight" for k in missing)
    net.set_aux_weight(0.0)
    x, _ = batch()
    for training in (True, False):
        plain.train(training), net.train(training)
        torch.testing.assert_close(net(x), plain(x), rtol=RTOL, atol=ATOL)


# -- the whole network: fused against eager and against the formula ------------------------


@pytest.mark.parametrize("variant", ["softmax", "per-sample", "gumbel-hard", "checkpoint-cells"])
def test_fused_loss_and_gradients_equal_the_eager_supernet(variant):
    kw = {"per-sample": dict(sample_per="sample"),
          "gumbel-hard": dict(relaxation="gumbel_hard", generator=torch.Generator().manual_seed(3)),
          "checkpoint-cells": dict(checkpoint_cells=True)}.get(variant, {})
    net = network(**kw)
    net.set_aux_weight(0.6)
    x, y = batch(n=3)
    eager = EagerSupernet(net, fused_gumbel(net.arch.generator) if variant == "gumbel-hard" else None)
    if variant == "gumbel-hard":
        net.arch.generator.manual_seed(3)
    expected = gradients(net, eager, x, y)
    if variant == "gumbel-hard":
        net.arch.generator.manual_seed(3)
    fused = gradients(net, net, x, y)
    assert_same_gradients(fused, expected)
    aux_grads = [p.grad for cell in net.cells for p in cell.aux_skips.parameters()]
    assert aux_grads and all(g is not None and g.abs().sum() > 0 for g in aux_grads)


@pytest.mark.parametrize("K", [1, 2])
def test_fused_loss_and_gradients_equal_the_formula_also_with_partial_channels(K):
    net = network(K=K)
    net.set_aux_weight(0.45)
    x, y = batch(n=3)
    expected = gradients(net, lambda x: reference_logits(net, x, K), x, y)
    fused = gradients(net, net, x, y)
    assert_same_gradients(fused, expected)
    if K > 1:  # β̂ comes with partial channels: its gradient is among the compared ones
        assert net.arch.betas is not None


def test_the_aux_is_active_in_evaluation_too():
    net = network()
    net.set_aux_weight(0.8)
    x, _ = batch()
    net(x)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_logits(net, x), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(net(x), EagerSupernet(net)(x), rtol=RTOL, atol=ATOL)


# -- edge costs leave the aux out -----------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2])
def test_recorded_edge_costs_cover_the_operations_only(K):
    """Cost of (edge e, op k) = w_ek·Σ ∂L/∂node ⊙ op_ek(x): the gradient of a unit scale on that term."""
    net = network(K=K)
    net.set_aux_weight(0.7)
    x, y = batch()
    E, Kops = net.arch.num_edges, len(net.arch.ops)
    scales = [torch.ones(E, Kops, dtype=torch.float64, requires_grad=True) for _ in net.cells]
    F.cross_entropy(reference_logits(net, x, K, scales), y).backward()
    expected = torch.stack([s.grad for s in scales])
    net.zero_grad(set_to_none=True)
    with CostRecorder(net) as recorder:
        F.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(recorder.costs, expected, rtol=RTOL, atol=ATOL)


# -- masked edges -----------------------------------------------------------------------------


def test_a_removed_edge_passes_no_aux_and_an_edge_left_with_none_passes_it():
    net = network()
    net.set_aux_weight(0.5)
    x, _ = batch()
    cell = net.cells[0]
    with torch.no_grad():
        s = net.stem(x)
        w = F.softmax(net.arch.alphas["normal"], -1)
        none = net.arch.ops.index("none")
        every = list(range(len(net.arch.ops)))
        # Edge 0 (input 0 -> node 2) removed, edge 1 (input 1 -> node 2) left with `none` only.
        active = [[], [none]] + [every] * (cell.num_edges - 2)
        out = cell(s, s, w, active, aux_weight=net.aux_weight)
        with plain_forms():
            h1 = cell.preprocess1(s)
        node2 = out[:, : out.size(1) // 2]
        torch.testing.assert_close(node2, 0.5 * h1, rtol=RTOL, atol=ATOL)  # only edge 1's β·identity


# -- β -----------------------------------------------------------------------------------------


def test_set_aux_weight_writes_the_buffer_in_place():
    net = network()
    buffer = net.aux_weight
    assert buffer.dim() == 0 and buffer.dtype == torch.float64 and float(buffer) == 1.0
    ptr = buffer.data_ptr()
    net.set_aux_weight(0.25)
    assert net.aux_weight is buffer and net.aux_weight.data_ptr() == ptr and float(net.aux_weight) == 0.25
    net.set_aux_weight(1)
    assert float(buffer) == 1.0


def test_without_aux_skip_there_is_no_buffer_and_set_aux_weight_refuses():
    net = network(aux_skip=False)
    assert "aux_weight" not in dict(net.named_buffers())
    assert all(cell.aux_skips is None for cell in net.cells)
    with pytest.raises(ValueError, match="aux_skip"):
        net.set_aux_weight(0.5)


def test_state_dict_round_trip_keeps_aux_modules_and_beta():
    net = network()
    net.set_aux_weight(0.3)
    x, y = batch()
    F.cross_entropy(net(x), y).backward()  # BatchNorm statistics of the aux modules move
    state = net.state_dict()
    assert "aux_weight" in state and "cells.1.aux_skips.0.conv_1.weight" in state
    assert "cells.1.aux_skips.0.bn.running_mean" in state
    other = network(seed=7)
    other.load_state_dict(state)
    assert float(other.aux_weight) == 0.3
    net.eval(), other.eval()
    torch.testing.assert_close(other(x), net(x), rtol=0, atol=0)


def test_minimal_cell_network_takes_aux_skip():
    net = minimal_cell_network(4, 3, 3, in_channels=1, aux_skip=True)
    assert all(cell.aux_skips is not None for cell in net.cells) and float(net.aux_weight) == 1.0


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, "0.5", True, None])
def test_set_aux_weight_refuses_bad_values(value):
    with pytest.raises(ValueError, match="value"):
        network().set_aux_weight(value)


def test_bad_aux_skip_arguments_are_refused():
    with pytest.raises(ValueError, match="aux_skip"):
        network(aux_skip="yes")
    with pytest.raises(ValueError, match="aux_skip"):  # a factorized reduce on 3 channels
        SearchCell(1, 1, 4, 4, 3, True, False, ("none", "max_pool_3x3"), aux_skip=True)
    net, plain = network(), network(aux_skip=False)
    s = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    w = F.softmax(net.arch.alphas["normal"], -1)
    with pytest.raises(ValueError, match="aux_weight"):
        net.cells[0](s, s, w)
    with pytest.raises(ValueError, match="aux_weight"):
        plain.cells[0](s, s, w, aux_weight=torch.tensor(1.0, dtype=torch.float64))
