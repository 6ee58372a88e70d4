"""Memory forms of issue 16: the pools' BatchNorm output recomputed in backward
(`pool_bn`, also where a node's mixed_sum saves it), recipes that compose with other
saved-tensor hooks, and per-cell activation checkpointing (SearchNetwork.checkpoint_cells):
each gives the plain computation's loss, gradients and BatchNorm statistics (float64)."""
import pytest
import torch
import torch.nn.functional as F

from pynas.bench.search import (build, check_paths, checkpointed_activations_mb, make_batches, saved_activations_mb,
                                threads)
from pynas.nn import SearchNetwork
from pynas.nn.ops import build_op, lean_forms, plain_forms, recomputable, save_memory, saves_recomputed

ALL = dict(bn_output=True, pool_indices=True, sep_relu=True, depthwise=True, pool_bn=True)


@pytest.mark.parametrize("name", ["max_pool_3x3", "avg_pool_3x3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_pool_bn_form_equals_the_plain_form(name, stride):
    torch.manual_seed(0)
    op = build_op(name, 4, stride, affine=False, search=True).double()
    plain = build_op(name, 4, stride, affine=False, search=True).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, (7 + stride - 1) // stride, (7 + stride - 1) // stride, dtype=torch.float64)
    with threads(1), lean_forms(pool_bn=True):
        for _ in range(2):  # running statistics over two batches (momentum and the unbiased variance)
            y = op(x)
            with plain_forms():
                y_plain = plain(x)
            torch.testing.assert_close(y, y_plain)
            (dx,) = torch.autograd.grad(y, x, g)
            (dx_plain,) = torch.autograd.grad(y_plain, x, g)
            torch.testing.assert_close(dx, dx_plain)
        for a, b in zip(op.buffers(), plain.buffers()):
            torch.testing.assert_close(a, b)
        # Nothing but the input and the batch's 1/σ is kept: the pool's and the BN's outputs are not.
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = op(x)
        assert {t.numel() for t in saved} == {x.numel(), 4}
        # The recipe a node's mixed_sum keeps gives bitwise the forward's output.
        recipe, _ = y._pynas_recipe
        with torch.no_grad():
            assert torch.equal(recipe.compute(*recipe.inputs), y)
        wide = build_op(name, 16, stride, affine=False, search=True)  # float32, channels-last (the CPU layout)
        xc = torch.randn(4, 16, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
        yc = wide(xc)
        recipe, _ = yc._pynas_recipe
        with torch.no_grad():
            assert torch.equal(recipe.compute(*recipe.inputs), yc)
        if name == "avg_pool_3x3":  # twice differentiable (a max pool is piecewise linear)
            small = build_op(name, 2, stride, affine=False, search=True).double()
            assert torch.autograd.gradgradcheck(small, torch.randn(2, 2, 5, 5, dtype=torch.float64,
                                                                   requires_grad=True))


def _node(op, x, w):
    """One node, as a cell sums it: mixed_sum over the op's output (after the edge's shared
    ReLU where the op starts with one) and x itself."""
    from pynas.functional import mixed_sum
    with saves_recomputed():
        return mixed_sum([op.after_relu(x) if getattr(op, "relu_first", False) else op(x), x], w)


def test_mixed_sum_keeps_the_pool_bn_output_as_a_recipe():
    torch.manual_seed(0)
    op = build_op("avg_pool_3x3", 4, 1, affine=False, search=True).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    with threads(1):
        with lean_forms(pool_bn=True):
            lean = _node(op, x, w)
        with plain_forms():
            plain = _node(op, x, w)
        torch.testing.assert_close(lean, plain)
        for a, b in zip(torch.autograd.grad(lean.square().sum(), [x, w]), torch.autograd.grad(plain.square().sum(), [x, w])):
            torch.testing.assert_close(a, b)
        # Twice differentiable through the recipe too (α's gradient differentiated in x)
        with lean_forms(pool_bn=True):
            assert torch.autograd.gradgradcheck(lambda t, v: _node(op, t, v), (x, w))


@pytest.mark.parametrize("form", ["pool_bn", "depthwise"])
def test_modifying_a_recomputed_from_tensor_in_place_after_forward_raises(form):
    torch.manual_seed(0)
    name = "avg_pool_3x3" if form == "pool_bn" else "dil_conv_3x3"
    op = build_op(name, 4, 1, affine=False, search=True)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.tensor([0.3, 0.7])
    with threads(1), lean_forms(**{form: True}):
        h = x * 1.0
        y = _node(op, h, w)
        h.add_(1.0)
        with pytest.raises(RuntimeError, match="modified"):
            y.sum().backward()


def test_recipes_compose_with_an_outer_hook():
    # A recipe's inputs go through the hooks active below (a counter, checkpointing): they see them.
    seen = []
    x = torch.randn(4, 3, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or ("outer", t), lambda p: p[1]):
        with saves_recomputed():
            r = recomputable(x + 1, lambda t: t + 1, [x])  # an add keeps nothing; the mul after it keeps r
            y = (r * r).sum()
    assert seen and all(t is x for t in seen)
    (g,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(g, 2 * (x + 1))


def test_lean_forms_bring_darts_activations_below_a_third_of_eager():
    # The targets of issue 16 read off bench_search's counting at a small batch (ratios do not depend on it).
    with threads(1):
        model, _ = build("darts", 8, 8)  # the DARTS depth: one cell of eight is what checkpointing keeps
        batch = make_batches(2, 16)[0]
        from pynas.bench.search import EagerSupernet
        eager = saved_activations_mb(model, EagerSupernet(model), batch)
        with lean_forms(**{**ALL, "pool_bn": False, "depthwise": False}):
            before = saved_activations_mb(model, model, batch)
        with lean_forms(**{**ALL, "depthwise": False}):
            pool_bn = saved_activations_mb(model, model, batch)
        with lean_forms(**ALL):
            all_forms = saved_activations_mb(model, model, batch)
            model.checkpoint_cells = True
            checkpointed = checkpointed_activations_mb(model, model, batch)
    assert pool_bn < before - 0.05 * eager  # two activations of 29 per edge
    assert all_forms < 0.3 * eager
    assert checkpointed["peak_mb"] == pytest.approx(checkpointed["forward_mb"] + checkpointed["cell_mb"])
    assert 0 < checkpointed["forward_mb"] < checkpointed["peak_mb"] < 0.15 * eager


@pytest.mark.parametrize("method", ["darts", "snas", "gdas"])
def test_checkpointed_cells_give_the_same_step(method):
    # Loss, every weight and α gradient and the BatchNorm statistics (updated once, not again by the
    # recomputation) equal the eager path's; Gumbel samples are drawn before the cells.
    with lean_forms(**ALL):
        assert max(check_paths(method, checkpoint_cells=True).values()) < 1e-9
    assert max(check_paths(method, checkpoint_cells=True).values()) < 1e-9  # the NCHW default: plain forms


def _s4_step(checkpoint: bool):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=10, layers=3, steps=2, multiplier=2, space="s4").double()
    model.checkpoint_cells = checkpoint
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(1)  # the noise op's samples come from here
    loss = F.cross_entropy(model(x), torch.tensor([1, 3]))
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return loss, grads, [b.clone() for b in model.buffers()], torch.get_rng_state()


def test_checkpointed_cells_redraw_s4s_noise_identically():
    # S4's `noise` draws N(0, 1) inside the cells: the recomputation must draw the same samples
    # (else the node values, the weights' and α's gradients differ) and leave the generator as it was.
    with threads(1):
        loss, grads, buffers, rng = _s4_step(False)
        loss_c, grads_c, buffers_c, rng_c = _s4_step(True)
    torch.testing.assert_close(loss_c, loss)
    assert sum(g is not None for g in grads) > 10
    for a, b in zip(grads_c, grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    for a, b in zip(buffers_c, buffers):
        torch.testing.assert_close(a, b)
    assert torch.equal(rng_c, rng)


def test_checkpointing_refuses_observers():
    model = SearchNetwork(C=4, num_classes=10, layers=3, steps=2, multiplier=2, checkpoint_cells=True)
    x = torch.randn(2, 3, 8, 8)
    model.cells[0].state_observer = lambda cell, states: None
    with pytest.raises(ValueError, match="checkpoint_cells"):
        model(x)
    model.cells[0].state_observer = None
    model.cells[1].cost_recorder = lambda cell, costs: None
    with pytest.raises(ValueError, match="checkpoint_cells"):
        model(x)
    with torch.no_grad():  # nothing to checkpoint without autograd: observers are fine
        model(x)


def test_search_with_checkpointed_cells_ends_where_the_plain_search_does(tmp_path):
    # `pynas search --checkpoint-cells`: the same steps (weights, α and BatchNorm statistics), in a
    # channels-last network (C = 8: the CPU lean forms on) with S4's noise drawn inside the cells.
    from torch.utils.data import Subset

    from pynas.cli import main
    from pynas.search import run

    argv = ["search", "--method", "darts", "--space", "s4", "--epochs", "1", "--C", "8", "--layers", "3",
            "--steps", "2", "--batch-size", "16", "--quiet"]
    search_data = run.search_data
    with pytest.MonkeyPatch.context() as mp:  # 2 steps of 16 images and a 16-image evaluation
        mp.setattr(run, "search_data", lambda cfg: (lambda t, v, i: (Subset(t, range(32)), Subset(v, range(16)), i))(
            *search_data(cfg)))
        checkpoint, calls = torch.utils.checkpoint.checkpoint, []
        mp.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
        with threads(1):
            assert main([*argv, "--checkpoint-cells", "--out", str(tmp_path / "checkpointed")]) == 0
            assert len(calls) >= 3 * 2 * 2  # every cell of every forward: α and weight steps, 2 steps
            calls.clear()
            assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
            assert not calls
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("checkpointed", "plain"))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    with pytest.raises(ValueError, match="--checkpoint-cells"):
        run.RunConfig(space="nb201", checkpoint_cells=True).validate()


@pytest.mark.slow
def test_bench_search_checkpoint_cells_writes_the_checkpointed_count(tmp_path):
    import json

    from pynas.cli import main

    args = ["bench", "search", "--device", "cpu", "--methods", "darts", "--batch-size", "2", "--C", "4",
            "--layers", "3", "--image-size", "8", "--warmup", "0", "--steps", "1", "--threads", "1",
            "--checkpoint-cells", "--out", str(tmp_path)]
    assert main(args) == 0
    (path,) = tmp_path.glob("search-cpu-checkpoint-*.json")
    result = json.loads(path.read_text())
    assert result["checkpoint_cells"] and "recomputation" in result["activations"]
    (row,) = result["rows"]
    model, strategy = build("darts", 4, 3)
    model.checkpoint_cells = True
    save_memory(model)  # checkpointed cells come with the memory-saving forms, as in `pynas search`
    with threads(1):
        expected = checkpointed_activations_mb(model, model, make_batches(2, 8)[0])["peak_mb"]
    assert row["fused"]["activations_mb"] == pytest.approx(expected)
    assert 0 < row["activations_ratio"] < 1


def _counts(model, batch):
    """Activations one forward of ``model`` keeps: as it is, with every lean form, and at the device's default."""
    before = model.checkpoint_cells
    model.checkpoint_cells = False  # one plain forward's saves (checkpointing counts otherwise)
    try:
        as_is = saved_activations_mb(model, model, batch)
        with lean_forms(**ALL):
            every = saved_activations_mb(model, model, batch)
        save_memory(model, False)
        default = saved_activations_mb(model, model, batch)
    finally:
        model.checkpoint_cells = before
    return as_is, every, default


@pytest.mark.parametrize("options, saving", [({}, False), (dict(memory_saving=True), True),
                                             (dict(checkpoint_cells=True), True), (dict(max_memory="10GB"), True),
                                             (dict(checkpoint_cells=True, memory_saving=False), False)])
def test_memory_asked_for_turns_every_lean_form_on(options, saving):
    # `pynas search --memory-saving`, --checkpoint-cells and --max-memory build the supernet with every lean
    # form (RunConfig.resolved, build_search); without them the CPU default keeps more (channels-last, C = 8).
    from types import SimpleNamespace

    from pynas.search.build import build_search
    from pynas.search.config import RunConfig

    cfg = RunConfig(space="darts", method="darts", C=8, layers=3, **options).resolved()
    assert cfg.memory_saving is saving
    with threads(1):
        torch.manual_seed(0)
        model, _ = build_search(cfg, SimpleNamespace(num_classes=10, in_channels=3, image_size=8), 10)
        as_is, every, default = _counts(model, make_batches(2, 8)[0])
    assert every < 0.8 * default
    assert as_is == pytest.approx(every if saving else default)


def test_the_memory_estimate_measures_the_forms_its_run_uses():
    # `pynas bench memory` and --max-memory probe the model that pynas.bench.memory._build makes from the
    # run's configuration: with --max-memory (or --budget), every lean form, as the run it sizes.
    import dataclasses

    from pynas.bench.memory import _build
    from pynas.search.config import RunConfig

    info = dict(in_channels=3, num_classes=10, image_size=8)
    for cfg, saving in [(RunConfig(C=8, layers=3, max_memory="1GB"), True), (RunConfig(C=8, layers=3), False)]:
        with threads(1):
            model, *_ = _build(dataclasses.asdict(cfg.resolved()), info, 2, None)
            as_is, every, default = _counts(model, make_batches(2, 8)[0])
        assert as_is == pytest.approx(every if saving else default) and every < default
