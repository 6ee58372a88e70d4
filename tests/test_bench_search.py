"""The search benchmark: its eager path computes what the fused supernet does (loss,
gradients, BatchNorm statistics), the operations' lean training forms equal their
plain forms, and `pynas bench search` runs end to end and writes its JSON (timings
are not asserted)."""
import json

import pytest
import torch
import torch.nn.functional as F

from pynas.bench.search import (METHODS, EagerSupernet, build, check_paths, make_batches, memory_in_subprocess, saved_activations_mb,
                                 step_gradients, threads)
from pynas.cli import main
from pynas.nn import SearchNetwork
from pynas.nn.ops import build_op, default_lean, lean_forms, plain_forms, recompute_depthwise

LEAN = dict(bn_output=True, pool_indices=True, sep_relu=True, pool_bn=True)  # on whatever the layout's default


@pytest.mark.parametrize("method", METHODS)
def test_eager_and_fused_steps_give_the_same_loss_and_gradients(method):
    diffs = check_paths(method)  # asserts; float64, the same Gumbel noise on both paths
    assert max(diffs.values()) < 1e-9


def test_the_same_with_depthwise_outputs_recomputed():
    assert max(check_paths("darts", recompute_depthwise=True).values()) < 1e-9


def test_the_check_sees_different_noise():
    # With its own (Python) Gumbel noise the eager SNAS step differs: the check is not vacuous.
    with threads(1):
        fused = step_gradients("snas", "fused", C=4, layers=3, image_size=8, batch_size=2)["alpha"]
        model, strategy = build("snas", 4, 3, dtype=torch.float64)
        strategy.forward = EagerSupernet(model)
        strategy.w_opt.step = strategy.a_opt.step = lambda *a, **k: None
        strategy.step(*make_batches(2, 8, dtype=torch.float64))
    assert not torch.allclose(strategy.alphas[0].grad, fused[0])


def test_eager_path_runs_every_op_with_its_own_relu(monkeypatch):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=10, layers=1, steps=1, multiplier=1)
    x = torch.randn(2, 3, 8, 8)
    calls = []
    original = F.relu
    monkeypatch.setattr(F, "relu", lambda t, *a, **k: calls.append(t) or original(t, *a, **k))
    with torch.no_grad():
        EagerSupernet(model)(x)
    eager_relus = len(calls)
    calls.clear()
    with torch.no_grad():
        model(x)
    # Two preprocessing ReLUs; one node, two edges of 4 ReLU-first ops (2 of them sep_convs with an
    # inner ReLU), each op with its own ReLU; the fused path shares one per edge.
    assert eager_relus == 2 + 2 * (4 + 2) and len(calls) < eager_relus


@pytest.mark.parametrize("name, recompute", [("max_pool_3x3", False), ("avg_pool_3x3", False), ("skip_connect", False),
                                             ("sep_conv_3x3", False), ("sep_conv_3x3", True), ("dil_conv_5x5", True)])
@pytest.mark.parametrize("stride", [1, 2])
def test_lean_training_forms_equal_the_plain_forms(name, recompute, stride):
    # The fused path's operations keep fewer tensors for backward (pynas.nn.ops); the
    # eager path runs them in plain_forms(). Same outputs, gradients and BN statistics.
    torch.manual_seed(0)
    op = build_op(name, 4, stride, affine=False, search=True).double()
    plain = build_op(name, 4, stride, affine=False, search=True).double()
    plain.load_state_dict(op.state_dict())
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 6 // stride, 6 // stride, dtype=torch.float64)
    with threads(1), lean_forms(**LEAN, depthwise=recompute):
        y = op(x)
        with plain_forms():
            y_plain = plain(x)
        torch.testing.assert_close(y, y_plain)
        params, params_plain = [x, *op.parameters()], [x, *plain.parameters()]
        for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(y_plain, params_plain, g)):
            torch.testing.assert_close(a, b)
        for a, b in zip(op.buffers(), plain.buffers()):
            torch.testing.assert_close(a, b)
        # Twice differentiable (DARTS' second-order step differentiates the weight gradient);
        # a max pool is piecewise linear, where numerical second derivatives are unreliable.
        if name != "max_pool_3x3":
            small = build_op(name, 2, stride, affine=False, search=True).double()
            names = [n for n, _ in small.named_parameters()]
            inputs = (torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True), *small.parameters())
            assert torch.autograd.gradgradcheck(
                lambda t, *p: torch.func.functional_call(small, dict(zip(names, p)), (t,)), inputs)


def test_lean_forms_keep_fewer_activations():
    from pynas.bench.search import saved_activations_mb

    with threads(1):
        model, _ = build("darts", 4, 3)
        batch = make_batches(2, 8)[0]
        eager = saved_activations_mb(model, EagerSupernet(model), batch)
        with lean_forms(**LEAN):
            fused = saved_activations_mb(model, model, batch)
            with recompute_depthwise(True):
                recomputed = saved_activations_mb(model, model, batch)
        plain = saved_activations_mb(model, model, batch)  # C = 4 computes in NCHW: no lean form by default
    assert recomputed < fused < 0.6 * eager
    assert fused < 0.7 * plain < plain < eager  # plain forms still skip `none` and the per-op ReLUs


def test_lean_forms_default_to_on_in_channels_last_on_cpu_and_off_in_nchw():
    x = torch.randn(2, 8, 6, 6)
    for form in ("bn_output", "pool_indices", "sep_relu", "pool_bn"):
        assert default_lean(form, x.contiguous(memory_format=torch.channels_last))
        assert not default_lean(form, x)
    assert not default_lean("depthwise", x.contiguous(memory_format=torch.channels_last))
    with threads(1):  # the network's CPU default (C >= 8: channels-last) keeps the lean forms' activations
        model, _ = build("darts", 8, 3)
        batch = make_batches(2, 8)[0]
        auto = saved_activations_mb(model, model, batch)
        model.channels_last = False
        nchw = saved_activations_mb(model, model, batch)
        with lean_forms(**LEAN):
            nchw_lean = saved_activations_mb(model, model, batch)
    assert auto == pytest.approx(nchw_lean) and auto < 0.7 * nchw
    with pytest.raises(ValueError, match="unknown form"):
        with lean_forms(bn=True):
            pass


def test_cpu_peak_memory_is_the_measuring_process_own():
    # Linux carries ru_maxrss over fork and exec: a child measured that way reports its
    # parent's peak when that is higher. The ballast makes this process's peak > 1 GiB.
    ballast = torch.ones(2 ** 28)
    with open("/proc/self/status") as f:
        parent_mb = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    result = memory_in_subprocess("gdas", "fused", batch_size=2, C=4, layers=3, image_size=8, steps=1)
    assert 0 < result["baseline_mb"] <= result["peak_mb"] < parent_mb - 512
    del ballast


def test_bench_search_cli_writes_both_paths_and_ratios(tmp_path, capsys):
    args = ["bench", "search", "--device", "cpu", "--methods", "gdas", "--batch-size", "2", "--C", "4",
            "--layers", "3", "--image-size", "8", "--warmup", "0", "--steps", "1", "--threads", "1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (path,) = tmp_path.glob("search-cpu-*.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cpu" and result["torch"] == torch.__version__ and result["date"]
    assert result["size"]["batch_size"] == 2 and set(result["check"]) == {"gdas"}
    (row,) = result["rows"]
    assert row["method"] == "gdas"
    for path_name in ("eager", "fused"):
        assert row[path_name]["images_per_s"] > 0 and row[path_name]["peak_mb"] > 0
    assert row["speedup"] > 0 and row["memory_ratio"] > 0 and 0 < row["activations_ratio"] < 1
    # gdas is bi-level: 25,000 of CIFAR-10's training images per epoch at batch 2, 50 epochs
    for path_name in ("eager", "fused"):
        assert row["search_50_epochs_h"][path_name] == pytest.approx(
            50 * 12_500 * row[path_name]["step_ms"] / 3_600_000, rel=1e-12)
    out = capsys.readouterr().out
    assert "fused/eager" in out and "50-epoch CIFAR-10 search at batch 2" in out


def test_search_hours_count_the_images_each_method_trains_on():
    from pynas.bench.search import search_hours

    # DARTS' code: 25,000 images for the weights (train_portion 0.5), batch 64: 391 steps an epoch
    assert search_hours("darts", 64, 1000.0) == pytest.approx(50 * 391 / 3600)
    # single-level methods train on all 50,000: 782 steps an epoch
    assert search_hours("snas", 64, 1000.0) == pytest.approx(50 * 782 / 3600)
