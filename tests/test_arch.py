"""Relaxations of α: the forms of their weights, reproducibility and masks."""
import math

import pytest
import torch

from pynas.arch import Architecture, TemperatureSchedule
from pynas.nn import DARTS
from pynas.nn.spaces import s1


def make(relaxation, **kwargs):
    return Architecture(DARTS, 14, relaxation=relaxation, **kwargs)


def test_softmax_rows_sum_to_one_and_init_is_small():
    arch = make("softmax")
    assert arch.alphas["normal"].abs().max() < 0.01
    w = arch.weights("normal").weights
    assert w.shape == (14, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(14))


def test_sigmoid_with_single_darts_init_is_one_eighth():
    arch = make("sigmoid", init=-math.log(7))
    torch.testing.assert_close(arch.weights("reduce").weights, torch.full((14, 8), 1 / 8))


@pytest.mark.parametrize("relaxation", ["gumbel_hard", "categorical"])
def test_hard_relaxations_are_one_hot_and_run_one_op(relaxation):
    arch = make(relaxation, generator=torch.Generator().manual_seed(0))
    ew = arch.weights("normal")
    w = ew.weights.detach()
    assert ((w - 1).abs() < 1e-6).sum() == 14 and (w.abs() < 1e-6).sum() == 14 * 7
    assert all(len(a) == 1 and w[e, a[0]].item() == pytest.approx(1.0) for e, a in enumerate(ew.active))
    (ew.weights * torch.randn(14, 8)).sum().backward()
    assert arch.alphas["normal"].grad.abs().sum() > 0


def test_gumbel_reproduces_by_seed_and_follows_the_schedule():
    a = make("gumbel", init="zeros", generator=torch.Generator().manual_seed(3)).weights("normal").weights
    arch = make("gumbel", init="zeros", generator=torch.Generator().manual_seed(3))
    b = arch.weights("normal").weights
    assert torch.equal(a, b)
    torch.testing.assert_close(b.sum(-1), torch.ones(14))
    assert arch.temperature == 1.0
    arch.set_progress(1.0)
    assert arch.temperature == pytest.approx(0.03)
    arch.set_progress(0.5)
    assert arch.temperature == pytest.approx(0.515)
    hard = make("gumbel_hard")
    assert hard.temperature == 10.0
    hard.set_progress(1.0)
    assert hard.temperature == pytest.approx(0.1)
    assert TemperatureSchedule(10, 0.1, "exponential")(0.5) == pytest.approx(1.0)


def test_per_sample_weights():
    arch = make("gumbel", sample_per="sample", generator=torch.Generator().manual_seed(0))
    w = arch.weights("normal", batch_size=5).weights
    assert w.shape == (5, 14, 8) and not torch.equal(w[0], w[1])
    with pytest.raises(ValueError, match="batch_size"):
        arch.weights("normal")


def test_masks_fix_remove_op_and_edge():
    for relaxation in ("softmax", "gumbel", "gumbel_hard", "categorical", "sigmoid"):
        arch = make(relaxation, generator=torch.Generator().manual_seed(1))
        arch.fix_op("normal", 0, "sep_conv_3x3")
        arch.remove_op("normal", 1, "skip_connect")
        arch.remove_edge("normal", 2)
        ew = arch.weights("normal")
        w = ew.weights.detach()
        k = DARTS.ops.index("sep_conv_3x3")
        assert w[0, k] > 0 and (w[0].sum() - w[0, k]).abs() < 1e-6
        assert w[1, DARTS.ops.index("skip_connect")] == 0
        assert ew.active[0] == [k] and ew.active[2] == []
        (ew.weights * torch.randn(14, 8)).sum().backward()
        assert torch.isfinite(arch.alphas["normal"].grad).all()
    with pytest.raises(ValueError, match="edge 14 out of range"):
        arch.remove_edge("normal", 14)
    with pytest.raises(ValueError, match="not in the space"):
        arch.fix_op("normal", 0, "conv_9x9")
    with pytest.raises(ValueError, match="unknown cell type"):
        arch.weights("other")


def test_per_edge_space_masks_unavailable_ops():
    edges = [["skip_connect", "sep_conv_3x3"]] * 14
    arch = Architecture(s1({"normal": edges, "reduce": edges}), 14)
    w = arch.weights("normal").weights
    assert (w[:, [DARTS.ops.index("skip_connect"), DARTS.ops.index("sep_conv_3x3")]].sum(-1) - 1).abs().max() < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="relaxation"):
        make("argmax")
    with pytest.raises(ValueError, match="sample_per"):
        make("softmax", sample_per="epoch")
    with pytest.raises(ValueError, match="init"):
        make("softmax", init="uniform")
    with pytest.raises(ValueError, match="positive"):
        TemperatureSchedule(1.0, 0.0)
