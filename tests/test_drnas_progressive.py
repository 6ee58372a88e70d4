"""DrNAS' progressive learning (xiangning-chen/DrNAS DARTS-space/train_search.py:119-160, net2wider.py,
operations.py ``wider``, utils.py:197-207 ``prune``): the Net2Net widening's copy rule against tensors built
here from the copy maps, the widened supernet against DrNAS' MixedOp/Cell forward written out, pruning against
a sort of α, the stage schedule, a two-epoch search from K = 6 to K = 4, and resumes across the boundary."""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pynas.nn import SearchNetwork
from pynas.nn.nb201 import NB201Network
from pynas.nn.ops import DilConv, FactorizedReduce, PoolBN, SepConv
from pynas.nn.widen import partial_channels_of, widen
from pynas.search import SearchConfig
from pynas.search.drnas import ProgressiveDrnas


def supernet(K=6, C=12, layers=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SearchNetwork(C, 10, layers, space="darts-no-none", partial_channels=K,
                         edge_normalisation=False).to(dtype)


def batches(n, seed, dtype=torch.float64, B=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, 3, 8, 8, generator=g, dtype=dtype), torch.randint(10, (B,), generator=g))
            for _ in range(n)]


def drnas_shuffle(x, groups):
    """DrNAS' channel_shuffle (model_search.py:14-23)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


def drnas_logits(net, x, K):
    """DrNAS' Network/Cell/MixedOp forward (model_search.py:41-56, 87-98, 173-191) with softmax weights and
    pynas' operation modules: each edge's ops on the first C/K channels, the rest max-pooled 2x2 on a
    reduction edge, concatenated and shuffled with K groups; nodes sum their edges unweighted."""
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        t = "reduce" if cell.reduction else "normal"
        mask = net.arch.mask(t)
        w = F.softmax(net.arch.alphas[t].masked_fill(~mask, float("-inf")), -1)
        states, e = [cell.preprocess0(s0), cell.preprocess1(s1)], 0
        for _ in range(cell.steps):
            node = 0
            for h in list(states):
                edge = cell.edges[e]
                part, rest = h[:, : h.size(1) // K], h[:, h.size(1) // K:]
                temp = sum(w[e, k] * edge.ops[edge._slot[k]](part) for k in edge.materialised if mask[e, k])
                if temp.shape[2] != h.shape[2]:
                    rest = F.max_pool2d(rest, 2, 2)
                node = node + drnas_shuffle(torch.cat([temp, rest], 1), K)
                e += 1
            states.append(node)
        s0, s1 = s1, torch.cat(states[-4:], 1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def randomise_statistics(net, seed):
    """BatchNorm statistics that differ per channel (the copy rule must be visible in them)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def sgd_with_momentum(net):
    opt = torch.optim.SGD(list(net.weight_parameters()), lr=0.1, momentum=0.9, weight_decay=3e-4)
    x, y = batches(1, 5)[0]
    F.cross_entropy(net(x), y).backward()
    opt.step()
    return opt


def grown(m, old):
    """Keeps the first ``old`` channels in place; the rest copies existing ones."""
    return torch.equal(m[:old], torch.arange(old)) and bool(((m[old:] >= 0) & (m[old:] < old)).all())


def test_widen_copies_weights_statistics_and_momentum_by_the_drawn_maps():
    net = supernet()
    randomise_statistics(net, 1)
    opt = sgd_with_momentum(net)
    names = {p: n for n, p in net.named_parameters()}
    old_params = {n: p.detach().clone() for n, p in net.named_parameters()}
    old_objects = dict(net.named_parameters())
    old_momentum = {names[p]: opt.state[p]["momentum_buffer"].clone() for p in opt.param_groups[0]["params"]}
    old_buffers = {n: b.clone() for n, b in net.named_buffers()}
    maps = widen(net, 4, torch.Generator().manual_seed(3), opt)

    assert partial_channels_of(net) == 4 and all(c.partial_channels == 4 for c in net.cells)
    new_params = dict(net.named_parameters())
    assert opt.param_groups[0]["params"] == list(net.weight_parameters())
    widened = set()
    module_names = {m: n for n, m in net.named_modules()}
    for cell in net.cells:
        for edge in cell.edges:
            C_old, C_new = edge.channels // 6, edge.channels // 4
            for op in edge.ops:
                name = module_names[op]
                if isinstance(op, PoolBN):
                    assert grown(maps[f"{name}.1"]["out"], C_old)
                elif isinstance(op, FactorizedReduce):
                    h = C_old // 2
                    m1, m2 = maps[f"{name}.conv_1"], maps[f"{name}.conv_2"]
                    assert grown(m1["in"], C_old) and grown(m2["in"], C_old)
                    assert grown(m1["out"], h) and grown(m2["out"], h)
                    # The BatchNorm follows the two convs' channels: conv_1's (old, new), then conv_2's.
                    assert torch.equal(maps[f"{name}.bn"]["out"], torch.cat([m1["out"], h + m2["out"]]))
                elif isinstance(op, (SepConv, DilConv)):
                    pairs = [f"{name}.body.0", f"{name}.body.2"] if isinstance(op, SepConv) else [f"{name}.body"]
                    for pair in pairs:
                        dw, pw, bn = maps[f"{pair}.0"], maps[f"{pair}.1"], maps[f"{pair}.2"]
                        assert "in" not in dw and grown(dw["out"], C_old)
                        assert torch.equal(pw["in"], dw["out"]) and grown(pw["out"], C_old)
                        assert torch.equal(bn["out"], pw["out"])
                for m in op.modules():
                    if isinstance(m, nn.Conv2d):
                        assert m.in_channels == C_new and m.weight.size(1) * m.groups == C_new
                    if isinstance(m, nn.BatchNorm2d):
                        assert m.num_features == C_new == m.running_mean.numel()
                widened |= {n for n in maps if n.startswith(name + ".")}
    assert widened == set(maps)

    new_buffers = dict(net.named_buffers())
    for module_name, m in maps.items():
        out, inp = m["out"], m.get("in")
        if f"{module_name}.weight" in old_params:  # a conv: gathered rows, then columns
            old = old_params[f"{module_name}.weight"]
            expected = old[out] if inp is None else old[out][:, inp]
            assert torch.equal(new_params[f"{module_name}.weight"], expected)
            momentum = old_momentum[f"{module_name}.weight"]
            expected_m = momentum[out] if inp is None else momentum[out][:, inp]
            assert torch.equal(opt.state[new_params[f"{module_name}.weight"]]["momentum_buffer"], expected_m)
            assert new_params[f"{module_name}.weight"] is not old_objects[f"{module_name}.weight"]
        else:  # a BatchNorm (affine-free in the supernet): its statistics
            for stat in ("running_mean", "running_var"):
                got = new_buffers[f"{module_name}.{stat}"]
                assert torch.equal(got, torch.stack([old_buffers[f"{module_name}.{stat}"][j] for j in out]))
    # Everything outside the edges' operations is untouched (same objects, same values).
    for n, p in new_params.items():
        if ".edges." not in n:
            assert p is old_objects[n] and torch.equal(p, old_params[n])
    assert len(opt.state) == len(opt.param_groups[0]["params"])


def test_widened_supernet_is_drnas_forward_at_the_new_K_and_trains():
    net = supernet()
    opt = sgd_with_momentum(net)
    widen(net, 4, torch.Generator().manual_seed(0), opt)
    x, y = batches(1, 7)[0]
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), drnas_logits(net, x, 4), rtol=1e-12, atol=1e-12)
    net.train()
    before = [p.detach().clone() for p in net.weight_parameters()]
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    loss = loss.detach()
    opt.step()
    assert math.isfinite(loss.item())
    edge_params = [p for n, p in net.named_parameters() if ".edges." in n]
    assert all(p.grad is not None and p.grad.shape == p.shape for p in edge_params)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.weight_parameters()))


def test_widen_draws_from_the_generator_and_refuses_bad_input():
    a, b, c = supernet(), supernet(), supernet()
    ma = widen(a, 4, torch.Generator().manual_seed(11))
    mb = widen(b, 4, torch.Generator().manual_seed(11))
    mc = widen(c, 4, torch.Generator().manual_seed(12))
    assert all(torch.equal(ma[n][k], mb[n][k]) for n in ma for k in ma[n])
    assert any(not torch.equal(ma[n][k], mc[n][k]) for n in ma for k in ma[n])
    with pytest.raises(ValueError, match="partial_channels"):
        widen(supernet(), 6, torch.Generator())
    with pytest.raises(ValueError, match="partial_channels"):
        widen(supernet(), 5, torch.Generator())  # 5 does not divide C = 12
    with pytest.raises(ValueError, match="generator"):
        widen(supernet(), 4, 0)
    torch.manual_seed(0)
    aux = SearchNetwork(12, 10, 3, space="darts-no-none", partial_channels=6, edge_normalisation=False,
                        aux_skip=True)
    with pytest.raises(ValueError, match="auxiliary skip"):
        widen(aux, 4, torch.Generator())


def test_edge_normalisation_option():
    assert supernet().arch.betas is None
    torch.manual_seed(0)
    assert SearchNetwork(12, 10, 3, partial_channels=6).arch.betas is not None  # PC-DARTS' default kept
    torch.manual_seed(0)
    assert SearchNetwork(12, 10, 3, edge_normalisation=True).arch.betas is not None
    with pytest.raises(ValueError, match="edge_normalisation"):
        SearchNetwork(12, 10, 3, edge_normalisation="yes")


def nb201_reference(net, x, K):
    """DrNAS' NAS201SearchCell_PartialChannel.forward (201-space/search_cells.py:157-177), softmax weights."""
    h = net.stem(x)
    w = F.softmax(net.arch.alphas["cell"].masked_fill(~net.arch.mask("cell"), float("-inf")), -1)
    for layer in net.cells:
        if not hasattr(layer, "edges"):
            h = layer(h)
            continue
        nodes, e = [h], 0
        for i in range(1, 4):
            node = 0
            for j in range(i):
                edge, part, rest = layer.edges[e], nodes[j][:, : h.size(1) // K], nodes[j][:, h.size(1) // K:]
                temp = sum(w[e, k] * edge.ops[edge._slot[k]](part) for k in edge.materialised)
                node = node + drnas_shuffle(torch.cat([temp, rest], 1), K)
                e += 1
            nodes.append(node)
        h = nodes[-1]
    return net.classifier(net.global_pooling(net.lastact(h)).flatten(1))


def test_nb201_partial_channels_and_widening():
    torch.manual_seed(0)
    net = NB201Network(8, N=1, partial_channels=4).double().eval()
    x = batches(1, 3)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(net(x), nb201_reference(net, x, 4), rtol=1e-12, atol=1e-12)
        maps = widen(net, 2, torch.Generator().manual_seed(0))
        torch.testing.assert_close(net(x), nb201_reference(net, x, 2), rtol=1e-12, atol=1e-12)
    conv = [n for n in maps if n.endswith("body.0")]  # nor_conv: inputs and outputs each grown (C/4 -> C/2)
    assert conv and all(grown(maps[n][k], len(maps[n][k]) // 2) for n in conv for k in ("in", "out"))
    assert all(torch.equal(maps[n[:-1] + "1"]["out"], maps[n]["out"]) for n in conv)
    with pytest.raises(ValueError, match="partial_channels"):
        NB201Network(8, N=1, partial_channels=3)


def strategy(net, epochs=2, **options):
    config = SearchConfig(epochs=epochs, w_lr=0.1, w_lr_min=0.0, a_lr=6e-4, a_betas=(0.5, 0.999))
    return ProgressiveDrnas(net, config, steps_per_epoch=2, **options)


def test_prune_keeps_the_top_k_alpha_per_edge():
    net = supernet()
    s = strategy(net)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.arch.alphas[t].copy_(torch.randn(14, 7, generator=g, dtype=torch.float64))
        net.arch.alphas["normal"][0] = torch.tensor([0.5, 0.5, 0.1, 0.5, 0.2, 0.5, 0.0])  # ties: the first
    before = {t: net.arch.alphas[t].detach().clone() for t in ("normal", "reduce")}
    s.prune(4)
    for t in ("normal", "reduce"):
        for e in range(14):
            row = before[t][e].tolist()
            kept = sorted(range(7), key=lambda k: (-row[k], k))[:4]
            assert net.arch.mask(t)[e].nonzero().flatten().tolist() == sorted(kept)
            for k in range(7):
                assert float(net.arch.alphas[t][e, k].detach()) == (row[k] if k in kept else 0.0)
            p = net.arch.probabilities(t)[e].detach()
            z = sum(math.exp(row[k]) for k in kept)
            assert all(float(p[k]) == 0.0 for k in range(7) if k not in kept)
            assert all(abs(float(p[k]) - math.exp(row[k]) / z) < 1e-12 for k in kept)
    assert net.arch.mask("normal")[0].nonzero().flatten().tolist() == [0, 1, 3, 5]


def test_stage_schedule():
    s = strategy(supernet(), epochs=50)
    assert s.stage_epochs == [25, 25] and s.frozen_epochs == [10, 10]  # the code's 10 of 25
    trains = []
    for e in range(50):
        s.epochs_done = e
        trains.append(s.alpha_trains())
    assert trains == [e % 25 >= 10 for e in range(50)]
    assert [s.partial_channels_at(e) for e in (0, 24, 25, 49)] == [6, 6, 4, 4]
    s5 = strategy(supernet(), epochs=5)
    assert s5.stage_epochs == [2, 3] and s5.frozen_epochs == [1, 1]  # floor(0.4·2 + .5), floor(0.4·3 + .5)
    s2 = strategy(supernet(), epochs=2)
    assert s2.stage_epochs == [1, 1] and s2.frozen_epochs == [0, 0]
    nb = strategy(supernet(), epochs=100, frozen_fraction=0.2)  # NAS-Bench-201's 10 of 50
    assert nb.frozen_epochs == [10, 10]
    for bad, match in ((dict(keep_ops=(8, 4)), "keep_ops"), (dict(partial_channels=(4, 6)), "partial_channels"),
                       (dict(partial_channels=(4, 2)), "partial channels 6"), (dict(stage_epochs=[1, 2]), "stage_epochs"),
                       (dict(frozen_fraction=1.0), "frozen_fraction"),
                       (dict(partial_channels=(6, 5)), "does not widen"), (dict(keep_ops=(7, 4, 2)), "keep_ops")):
        with pytest.raises(ValueError, match=match):
            strategy(supernet(), **bad)
    with pytest.raises(ValueError, match="warmup"):
        ProgressiveDrnas(supernet(), SearchConfig(epochs=2, warmup_epochs=1), 2)


def run_epochs(net, s, start, stop, data, steps=2):
    for epoch in range(start, stop):
        for i in range(steps):
            s.step(data[steps * epoch + i], data[steps * epoch + i + 8])
        s.epoch_end()


def test_two_epoch_search_goes_from_6_to_4_channels_and_ends_with_4_operations():
    net = supernet(dtype=torch.float32)
    s = strategy(net, epochs=2)
    data = batches(16, 0, torch.float32)
    assert s.partial_channels == 6 and s.alpha_trains()
    alpha_before = net.arch.alphas["normal"].detach().clone()
    run_epochs(net, s, 0, 1, data)
    assert not torch.equal(alpha_before, net.arch.alphas["normal"])  # α trained in stage 1 (0 frozen epochs)
    adam_steps = {id(a): int(s.a_opt.state[a]["step"]) for a in s.alphas}
    assert s.partial_channels == 4
    assert s.w_opt.param_groups[0]["params"] == s.weights == list(net.weight_parameters())
    # One cosine over both epochs: epoch 1 trains at η(1) (not the code's 2·η(1)).
    assert s.w_opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1 * (1 + math.cos(math.pi * 1 / 2)))
    run_epochs(net, s, 1, 2, data)
    assert partial_channels_of(net) == 4
    for t in ("normal", "reduce"):
        assert net.arch.mask(t).sum(-1).tolist() == [4] * 14
        assert (net.arch.probabilities(t)[~net.arch.mask(t)] == 0).all()
    assert all(int(s.a_opt.state[a]["step"]) == adam_steps[id(a)] + 2 for a in s.alphas)  # Adam's state kept


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted():
    """The data and final state of a 4-epoch search (stages of 2 + 2, one step per epoch)."""
    data = batches(12, 1, torch.float32)
    net = supernet(dtype=torch.float32)
    s = strategy(net, epochs=4, seed=5)
    run_epochs(net, s, 0, 4, data, steps=1)
    return data, copy.deepcopy(net.state_dict())


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_resume_across_the_boundary_is_bit_identical(uninterrupted, stop):
    """The boundary after epoch 2: a run stopped after ``stop`` epochs (before the boundary, just after it,
    after it) and resumed as pynas.search.run would (fresh supernet and strategy, restore_structure, the
    model's state, the strategy's) ends bit for bit as the uninterrupted run."""
    data, reference = uninterrupted
    first = supernet(dtype=torch.float32)
    s1 = strategy(first, epochs=4, seed=5)
    run_epochs(first, s1, 0, stop, data, steps=1)
    checkpoint = saved({"model": first.state_dict(), "strategy": s1.state_dict(), "epoch": stop})

    resumed = supernet(dtype=torch.float32, seed=99)  # other initial weights: all must come from the checkpoint
    s2 = strategy(resumed, epochs=4, seed=5)
    if stop >= 2:  # the widened state does not go into the supernet as built
        with pytest.raises(ValueError, match="restore_structure"):
            s2.load_state_dict(checkpoint["strategy"])
    s2.restore_structure(checkpoint["epoch"])
    resumed.load_state_dict(checkpoint["model"])
    s2.load_state_dict(checkpoint["strategy"])
    run_epochs(resumed, s2, stop, 4, data, steps=1)
    final = resumed.state_dict()
    assert final.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(final[k], v), k
