"""Operations, MixedOp, cells and supernets."""
import pytest
import torch
import torch.nn as nn

from pynas.arch import Architecture
from pynas.nn import (DARTS, NB201, OPS, S2, S3, S4, EvalNetwork, MixedOp, NB201Network, SearchCell, SearchNetwork,
                      minimal_cell_network, register_op, s1_from_alphas)
from pynas.genotype import NB201Genotype
from pynas.nn.nb201 import NB201SearchCell
from pynas.nn.ops import build_op


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_operation_maps_shape(name, stride):
    op = build_op(name, 8, stride, affine=False, search=True)
    y = op(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 8, 8 // stride, 8 // stride)


def test_noise_ignores_its_input():
    op = build_op("noise", 4, 1, affine=False)
    x = torch.randn(3, 4, 16, 16)
    torch.manual_seed(0)
    a = op(x)
    torch.manual_seed(0)
    b = op(torch.zeros_like(x))
    assert torch.equal(a, b) and abs(a.mean().item()) < 0.05 and abs(a.std().item() - 1) < 0.05


def test_supernet_pools_have_non_affine_batchnorm():
    op = build_op("max_pool_3x3", 4, 1, affine=False, search=True)
    assert isinstance(op[1], nn.BatchNorm2d) and not op[1].affine
    assert isinstance(build_op("max_pool_3x3", 4, 1, affine=True), nn.MaxPool2d)


def _eager_mixed(op: MixedOp, x, weights):
    # Reference: DARTS' sum(w * op(x)) with every op (none included) run on its own.
    total = 0
    for k, name in enumerate(op.names):
        if name == "none":
            out = x[:, :, :: op.stride, :: op.stride].mul(0.0)
        else:
            out = op.ops[op._slot[k]](x)
        w = weights[..., k]
        total = total + (w.view(-1, 1, 1, 1) if w.dim() == 1 else w) * out
    return total


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("per_sample", [False, True])
def test_mixed_op_equals_eager_sum_with_gradients(stride, per_sample):
    torch.manual_seed(0)
    op = MixedOp(6, stride, DARTS.ops).double()
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn((3, 8) if per_sample else (8,), dtype=torch.float64, requires_grad=True)
    params = [alpha, x] + list(op.parameters())
    w = alpha.softmax(-1)
    got = op(x, w)
    want = _eager_mixed(op, x, w)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, params, g, retain_graph=True), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


def test_mixed_op_with_hard_weight_runs_only_the_selected_op():
    torch.manual_seed(0)
    op = MixedOp(4, 1, DARTS.ops).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    alpha = torch.randn(8, dtype=torch.float64, requires_grad=True)
    soft = alpha.softmax(-1)
    k = DARTS.ops.index("sep_conv_3x3")
    hard = torch.zeros(8, dtype=torch.float64).index_fill_(0, torch.tensor([k]), 1.0) - soft.detach() + soft
    calls = []
    hooks = [sub.register_forward_hook(lambda m, i, o, n=n: calls.append(n))
             for n, m in zip(op.materialised, op.ops) for sub in m.modules()]
    y = op(x, hard, active=[k])
    for h in hooks:
        h.remove()
    assert set(calls) == {k}
    torch.testing.assert_close(y, op.ops[op._slot[k]](x))
    (g,) = torch.autograd.grad(y.sum(), [alpha])
    assert g.abs().sum() > 0  # straight-through gradient reaches α


def test_mixed_op_shares_one_relu(monkeypatch):
    import torch.nn.functional as F

    op = MixedOp(4, 1, DARTS.ops)
    x = torch.randn(2, 4, 8, 8)
    on_input = []
    original = F.relu
    monkeypatch.setattr(F, "relu", lambda t, *a, **k: on_input.append(t is x) or original(t, *a, **k))
    op(x, torch.full((8,), 1 / 8))
    # sep_conv_3x3/5x5 and dil_conv_3x3/5x5 all start with a ReLU of the edge input: applied once.
    assert sum(on_input) == 1


def test_darts_supernet_has_the_published_parameter_count():
    model = SearchNetwork(C=16, num_classes=10, layers=8)
    assert sum(p.numel() for p in model.weight_parameters()) == 1_930_618
    assert sum(p.numel() for p in model.arch_parameters()) == 2 * 14 * 8


@pytest.mark.parametrize("relaxation", ["softmax", "sigmoid", "gumbel", "gumbel_hard", "categorical"])
@pytest.mark.parametrize("sample_per", ["forward", "cell", "sample"])
def test_supernet_shapes_and_alpha_gradients(relaxation, sample_per):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=5, steps=3, multiplier=3, relaxation=relaxation, sample_per=sample_per,
                          generator=torch.Generator().manual_seed(0))
    y = model(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 10)
    y.logsumexp(-1).sum().backward()
    for alpha in model.arch_parameters():
        assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("space", [S2, S3, S4, "darts-no-none"])
def test_robustness_spaces(space):
    model = SearchNetwork(C=4, layers=3, space=space)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_s1_builds_only_each_edges_operations():
    alphas = {t: torch.randn(14, 8) for t in ("normal", "reduce")}
    space = s1_from_alphas(alphas)
    model = SearchNetwork(C=4, layers=3, space=space)
    cell = model.cells[0]
    for e, edge in enumerate(cell.edges):
        expected = [k for k in alphas["normal"][e].topk(2).indices.tolist() if DARTS.ops[k] != "none"]
        assert sorted(edge.materialised) == sorted(expected)
    model(torch.randn(2, 3, 8, 8)).sum().backward()


def test_any_cell_shape_and_inputs_and_image_size():
    model = SearchNetwork(C=4, num_classes=7, layers=4, steps=2, multiplier=2, in_channels=1)
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 7)
    model = SearchNetwork(C=4, layers=3, steps=3, multiplier=2, inputs=1)
    assert model.cells[0].edge_names == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_minimal_cell_has_five_edges():
    model = minimal_cell_network(C=4, layers=3)
    assert model.cells[0].edge_names == ["0->2", "1->2", "0->3", "1->3", "2->3"]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_nb201_supernet_and_child():
    model = NB201Network(C=4, N=1)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert model.cells[0].edge_names == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
    child = NB201Network(C=4, N=1, genotype="|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    assert child(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_nb201_child_cell_computes_its_genotype_as_the_supernet_at_one_hot_weights():
    # The child's plain sums against the supernet's MixedOps and fused sums, with the child's
    # weights copied into the chosen ops and one-hot edge weights (`none` on one edge).
    genotype = NB201Genotype.parse(
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")
    torch.manual_seed(0)
    child = NB201Network(C=4, N=1, genotype=genotype).double()
    supernet = NB201Network(C=4, N=1).double()
    checked = False
    for child_cell, super_cell in zip(child.cells, supernet.cells):
        if not isinstance(super_cell, NB201SearchCell):
            continue
        weights = torch.zeros(len(super_cell.edges), len(NB201.ops), dtype=torch.float64)
        for i, node in enumerate(genotype.nodes, start=1):
            for (op, j), module in zip(node, child_cell.ops[i - 1]):
                e = super_cell.edge_list.index((j, i))
                k = NB201.ops.index(op)
                weights[e, k] = 1.0
                if op != "none":
                    edge = super_cell.edges[e]
                    # Same conv weights; the child's affine BatchNorm starts at weight 1, bias 0.
                    edge.ops[edge._slot[k]].load_state_dict(module.state_dict(), strict=False)
        C = child_cell.ops[0][0].body[0].in_channels  # node 1's nor_conv_3x3: the stage's width
        x = torch.randn(3, C, 6, 6, dtype=torch.float64)
        torch.testing.assert_close(super_cell(x, weights), child_cell(x), rtol=1e-12, atol=1e-12)
        checked = True
    assert checked


def test_cell_weights_one_mixed_sum_per_node(monkeypatch):
    import pynas.nn.cells as cells

    calls = []
    original = cells.mixed_sum
    monkeypatch.setattr(cells, "mixed_sum", lambda o, w: calls.append(len(o)) or original(o, w))
    cell = SearchCell(4, 4, 8, 8, 4, False, False, DARTS.ops)
    arch = Architecture(DARTS, cell.num_edges)
    w = arch.weights("normal")
    cell(torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6), w.weights, w.active)
    assert calls == [2 * 7, 3 * 7, 4 * 7, 5 * 7]


def test_user_registered_operation_is_searchable():
    register_op("conv_1x1_test", lambda C, stride, affine: nn.Sequential(nn.Conv2d(C, C, 1, stride=stride), nn.BatchNorm2d(C, affine=affine)), overwrite=True)
    model = SearchNetwork(C=4, layers=3, space=["skip_connect", "conv_1x1_test"])
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="exists"):
        register_op("conv_1x1_test", lambda C, s, a: None)
    with pytest.raises(ValueError, match="unknown operation"):
        SearchNetwork(C=4, layers=3, space=["skip_connect", "no_such_op"])


@pytest.mark.parametrize("space", ["darts", "darts-no-none", "nb201", "s2", "s3", "s4", "s1", "minimal"])
@pytest.mark.parametrize("relaxation", ["softmax", "sigmoid", "gumbel", "gumbel_hard", "categorical"])
def test_every_space_with_every_relaxation(space, relaxation):
    torch.manual_seed(0)
    kwargs = dict(relaxation=relaxation, generator=torch.Generator().manual_seed(0))
    if space == "nb201":
        model = NB201Network(C=4, N=1, **kwargs)
    elif space == "minimal":
        model = minimal_cell_network(C=4, layers=3, **kwargs)
    elif space == "s1":
        alphas = {t: torch.randn(14, 8) for t in ("normal", "reduce")}
        model = SearchNetwork(C=4, layers=3, space=s1_from_alphas(alphas), **kwargs)
    else:
        model = SearchNetwork(C=4, layers=3, space=space, **kwargs)
    y = model(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in model.arch_parameters())


def test_networks_compute_in_channels_last_on_cpu():
    # The layout is chosen at the input; every layer keeps it (faster CPU convs and pools).
    torch.manual_seed(0)
    model = SearchNetwork(C=8, num_classes=10, layers=3, steps=2, multiplier=2)
    x = torch.randn(2, 3, 8, 8)
    seen = []
    model.cells[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    logits = model(x)
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
    grads = torch.autograd.grad(logits.logsumexp(1).sum(), list(model.weight_parameters()))
    model.channels_last = False
    nchw_logits = model(x)
    assert seen[-1].is_contiguous()
    torch.testing.assert_close(nchw_logits, logits)
    nchw_grads = torch.autograd.grad(nchw_logits.logsumexp(1).sum(), list(model.weight_parameters()))
    for a, b in zip(grads, nchw_grads):  # the same math: float32 rounding (BN over 2 samples amplifies it) apart
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()
    model.channels_last = None
    model.double()(x.double())  # oneDNN has no float64 kernels: float64 stays in NCHW
    assert seen[-1].dtype == torch.float64 and seen[-1].is_contiguous()
    # oneDNN's channels-last 1x1 conv backward crashes below 8 input channels: small C stays in NCHW.
    small = SearchNetwork(C=4, num_classes=10, layers=3, steps=2, multiplier=2)
    small.cells[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    small(x)
    assert seen[-1].is_contiguous()
    with pytest.raises(ValueError, match="channels_last"):
        SearchNetwork(C=4, layers=3, channels_last=True)


def _outputs_and_gradients(model, x, channels_last):
    """Logits and the gradients of every parameter (weights and α) in one layout; the layout the last
    cell computed in is checked."""
    model.channels_last = channels_last
    seen = []
    hook = model.cells[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    out = model(x)
    hook.remove()
    logits = out[0] if isinstance(out, tuple) else out
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert seen[-1].is_contiguous() != channels_last
    params = [p for p in model.parameters() if p.requires_grad]
    return logits, torch.autograd.grad(logits.float().logsumexp(1).sum(), params), params


def _close(a, b, tol, floor=0.0):
    """Within ``tol`` of b's largest magnitude (or of ``floor``, for gradients that are 0 but for rounding):
    rounding in another accumulation order."""
    assert (a.double() - b.double()).abs().max() <= tol * max(float(b.double().abs().max()), floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("network", ["search", "eval", "nb201-search", "nb201-child"])
def test_channels_last_computes_the_same_math(network, dtype):
    from pynas.genotype import DARTS_V2

    torch.manual_seed(0)
    if network == "search":
        model = SearchNetwork(C=8, num_classes=10, layers=3, steps=2, multiplier=2)
    elif network == "eval":
        model = EvalNetwork(DARTS_V2, C=8, num_classes=10, layers=3, auxiliary=False)
    elif network == "nb201-search":
        model = NB201Network(C=8, N=1, num_classes=10)
    else:
        model = NB201Network(C=8, N=1, num_classes=10,
                             genotype="|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|")
    model = model.to(dtype)
    x = torch.randn(8, 3, 8, 8).to(dtype)
    logits, grads, params = _outputs_and_gradients(model, x, True)
    nchw_logits, nchw_grads, _ = _outputs_and_gradients(model, x, False)
    # float32: rounding apart (BN over 8 samples amplifies it); bfloat16: 8 significant bits.
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    _close(logits.detach(), nchw_logits.detach(), tol)
    alphas = {id(a) for a in (model.arch_parameters() if hasattr(model, "arch_parameters") else ())}
    assert len(alphas) == (2 if network == "search" else 1 if network == "nb201-search" else 0)
    scale = max(float(g.double().abs().max()) for g in nchw_grads)
    for p, a, b in zip(params, grads, nchw_grads):  # the weights' gradients and α's
        _close(a, b, 3e-4 if dtype == torch.float32 else (8e-2 if id(p) not in alphas else 3e-2), 1e-3 * scale)
