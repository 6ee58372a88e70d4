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
from pynas.nn.ops import (LEAN_FORMS, build_op, default_lean, lean_forms, plain_forms, recompute_depthwise,
                          save_memory)

LEAN = dict(bn_output=True, pool_indices=True, sep_relu=True, pool_bn=True)  # on whatever the layout's default


@pytest.mark.parametrize("method", METHODS)
def test_eager_and_fused_steps_give_the_same_loss_and_gradients(method):
    diffs = check_paths(method)  # asserts; float64, the same Gumbel noise on both paths
    assert max(diffs.values()) < 1e-9


def test_the_same_with_depthwise_outputs_recomputed():
    assert max(check_paths("darts", recompute_depthwise=True).values()) < 1e-9


@pytest.mark.parametrize("method", ["darts", "darts-minus"])
def test_the_same_with_partial_channels_and_edge_normalisation(method):
    # PC-DARTS (K = 2 on C = 4): β's softmax per node weighs each shuffled edge; DARTS-' aux joins the operated part.
    options = dict(partial_channels=2)
    model, _ = build(method, 4, 3, **options)
    assert model.cells[0].partial_channels == 2 and model.arch.betas is not None
    assert max(check_paths(method, options=options).values()) < 1e-9
    with threads(1):
        betas = step_gradients(method, "eager", C=4, layers=3, image_size=8, batch_size=2, options=options)["alpha"][2:]
    assert len(betas) == 2 and all(float(b.abs().max()) > 0 for b in betas)  # β is differentiated, in both checks


def test_methods_are_built_at_the_size_they_need():
    # drnas: partial channels 6 then 4 divide C = 12 (the next multiple of 12 above 4); α trains from the first step.
    model, strategy = build("drnas", 4, 3)
    assert [len(model.cells), model.cells[0].edges[0].partial_channels] == [3, 6] and model.arch.betas is None
    assert model.cells[0].edges[0].channels == 12 and strategy.alpha_trains()
    with threads(1):
        alpha = step_gradients("drnas", "eager", C=4, layers=3, image_size=8, batch_size=2)["alpha"]
    assert all(float(a.abs().max()) > 0 for a in alpha)
    # lambda-darts: 4 cells (two normal ones to align), its step in the last epoch, where λ(e) = λ = 0.125.
    model, strategy = build("lambda-darts", 4, 3)
    assert [c.reduction for c in model.cells] == [False, True, True, False] and strategy.lambda_now() == 0.125


def test_channel_shuffle_moves_channel_g_times_part_plus_i_to_i_times_groups_plus_g():
    from pynas.bench.search import channel_shuffle

    x = torch.arange(12.0).view(1, 12, 1, 1)
    out = channel_shuffle(x, 3).flatten().tolist()
    assert out == [float(g * 4 + i) for i in range(4) for g in range(3)]


def test_eager_cells_run_their_hooks_as_a_call_would():
    # Λ-DARTS swaps a cell's edge weights in a forward pre-hook: the eager path must see the swap (here all
    # weights on the first operation, max_pool_3x3) and the forward hooks' replaced output, as model(x) does.
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=10, layers=2, steps=1, multiplier=1).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    one_op = lambda cell, args: args[:2] + (torch.zeros_like(args[2]).index_fill_(-1, torch.tensor([1]), 1.0),) + args[3:]
    handles = [model.cells[0].register_forward_pre_hook(one_op),
               model.cells[1].register_forward_hook(lambda cell, args, out: 2 * out)]
    with torch.no_grad():
        eager, fused = EagerSupernet(model)(x), model(x)
        for h in handles:
            h.remove()
        plain = model(x)
    torch.testing.assert_close(eager, fused)
    assert not torch.allclose(eager, plain)


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
        plain = saved_activations_mb(model, model, batch)  # no lean form by default on CPU
    assert recomputed < fused < 0.6 * eager
    assert fused < 0.7 * plain < plain < eager  # plain forms still skip `none` and the per-op ReLUs


def test_cpu_defaults_of_the_lean_forms_are_the_measured_ones():
    # pynas/nn/ops.py: on CPU the forms measured free are on in channels-last, none in NCHW; a model that
    # saves memory (save_memory) runs every form in either layout.
    x = torch.randn(2, 8, 6, 6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert {form for form in LEAN_FORMS if default_lean(form, cl)} == {"bn_output", "pool_indices"}
    assert not any(default_lean(form, x) for form in LEAN_FORMS)
    assert all(default_lean(form, t, memory_saving=True) for form in LEAN_FORMS for t in (x, cl))
    with threads(1):  # the network's CPU default (C >= 8: channels-last)
        model, _ = build("darts", 8, 3)
        batch = make_batches(2, 8)[0]
        default = saved_activations_mb(model, model, batch)
        with lean_forms(**{form: False for form in LEAN_FORMS}):
            off = saved_activations_mb(model, model, batch)
        with lean_forms(**{form: form in ("bn_output", "pool_indices") for form in LEAN_FORMS}):
            two = saved_activations_mb(model, model, batch)
        with lean_forms(**{form: True for form in LEAN_FORMS}):
            every = saved_activations_mb(model, model, batch)
        model.channels_last = False
        nchw = saved_activations_mb(model, model, batch)
        save_memory(model)
        nchw_saving = saved_activations_mb(model, model, batch)
        with lean_forms(depthwise=False):  # an explicit choice still overrides the model's
            nchw_saving_but_depthwise = saved_activations_mb(model, model, batch)
    assert default == pytest.approx(two) and two < 0.75 * off
    assert nchw == pytest.approx(off) and nchw_saving == pytest.approx(every) and every < 0.5 * off
    assert every < nchw_saving_but_depthwise < two
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
    # Timed alternating in one process: the ratio is the median of the rounds' (one round here).
    assert result["threads"] == 1 and "alternating" in result["timing"]
    assert row["speedup"] == pytest.approx(row["round_ratios"][0])
    assert row["round_ratios"][0] == pytest.approx(row["eager"]["step_ms"] / row["fused"]["step_ms"])
    out = capsys.readouterr().out
    assert row["loader_ms"] > 0 and "data loader" in out
    assert "fused/eager" in out and "50-epoch CIFAR-10 search at batch 2" in out
    # gdas is bi-level: 25,000 of CIFAR-10's training images per epoch at batch 2, 50 epochs
    for path_name in ("eager", "fused"):
        assert row["search_50_epochs_h"][path_name] == pytest.approx(
            50 * 12_500 * row[path_name]["step_ms"] / 3_600_000, rel=1e-12)


def test_loader_time_counts_the_batches_a_step_takes(monkeypatch):
    import pynas.data
    from pynas.bench.search import loader_ms_per_step

    seen = []

    def one_second_each(batches, count):
        seen.extend(b[0].shape for b in batches)
        return 1.0

    monkeypatch.setattr(pynas.data, "seconds_per_batch", one_second_each)
    # A bi-level step (darts) takes a training and a validation batch, a single-level one (snas) one.
    assert loader_ms_per_step("darts", 4, 12, batches=3) == 2000.0
    assert loader_ms_per_step("snas", 4, 12, batches=3) == 1000.0
    assert seen == [torch.Size([4, 3, 12, 12])] * 6  # augmented batches of the benchmark's size


SPEC = dict(method="gdas", batch_size=2, C=4, layers=3, image_size=8, device="cpu", seed=0, recompute_depthwise=False,
            layout="auto", checkpoint_cells=False, memory_saving=False)


def test_paths_take_turns_the_order_swapped_each_round_and_rounds_pair_their_steps():
    import pynas.bench.search as bench

    order, clock = [], iter(range(1, 100))

    def step(path, round):  # wall and CPU seconds: 1, 2, 3, ... in call order
        order.append((path, round))
        t = float(next(clock))
        return t, t / 2

    times = bench._alternate(step, warmup=1, steps=2, batch_size=4)
    # the warm-up round, then two timed, the order swapped each round
    assert order == [("eager", 0), ("fused", 0), ("fused", 1), ("eager", 1), ("eager", 2), ("fused", 2)]
    # round 1: fused 3 s, eager 4 s; round 2: eager 5 s, fused 6 s
    assert times["eager"]["steps_ms"] == [4000.0, 5000.0] and times["fused"]["steps_ms"] == [3000.0, 6000.0]
    assert times["round_ratios"] == pytest.approx([4 / 3, 5 / 6]) and times["cpu_round_ratios"] == pytest.approx([4 / 3, 5 / 6])
    assert times["eager"]["images_per_s"] == pytest.approx(4 / 4.5)


def test_one_model_steps_both_paths_of_a_round_from_the_same_generator_state(monkeypatch):
    import pynas.bench.search as bench

    order, states, original = [], [], bench.use_path

    def use_path(strategy, path, *args, **kwargs):
        order.append(path)
        states.append(strategy.model.arch.generator.get_state())
        return original(strategy, path, *args, **kwargs)

    monkeypatch.setattr(bench, "use_path", use_path)
    with threads(1):
        stepper = bench._PathStepper(**SPEC)
        for round, path in enumerate(["eager", "fused", "fused", "eager", "eager", "fused"]):
            stepper.step(path, round // 2)
    # Both steps of a round draw from the same generator state (the same hard samples), each round anew.
    assert [torch.equal(states[i], states[i + 1]) for i in range(0, 6, 2)] == [True] * 3
    assert not torch.equal(states[0], states[2]) and not torch.equal(states[2], states[4])


def test_a_process_per_path_draws_what_the_other_path_draws(monkeypatch):
    """On CPU each path steps in a process of its own (a _PathStepper of its own): the two draw the same
    samples round by round, as both paths of one model do in a round."""
    import pynas.bench.search as bench

    states, original = {"eager": [], "fused": []}, bench.use_path

    def use_path(strategy, path, *args, **kwargs):
        states[path].append(strategy.model.arch.generator.get_state())
        return original(strategy, path, *args, **kwargs)

    monkeypatch.setattr(bench, "use_path", use_path)
    with threads(1):
        for path in ("eager", "fused"):
            stepper = bench._PathStepper(**SPEC)
            for round in range(3):
                stepper.step(path, round)
    assert all(torch.equal(e, f) for e, f in zip(states["eager"], states["fused"]))
    assert not torch.equal(states["eager"][0], states["eager"][1])


def test_on_cpu_the_paths_step_in_turns_in_two_processes():
    import pynas.bench.search as bench

    with threads(1):
        times = bench.time_steps("gdas", batch_size=2, C=4, layers=3, image_size=8, warmup=1, steps=2)
    e, f = times["eager"]["steps_ms"], times["fused"]["steps_ms"]
    assert len(e) == len(f) == 2 and all(t > 0 for t in e + f)
    assert times["round_ratios"] == pytest.approx([e[0] / f[0], e[1] / f[1]])


def test_search_hours_count_the_images_each_method_trains_on():
    from pynas.bench.search import search_hours

    # DARTS' code: 25,000 images for the weights (train_portion 0.5), batch 64: 391 steps an epoch
    assert search_hours("darts", 64, 1000.0) == pytest.approx(50 * 391 / 3600)
    # single-level methods train on all 50,000: 782 steps an epoch
    assert search_hours("snas", 64, 1000.0) == pytest.approx(50 * 782 / 3600)
