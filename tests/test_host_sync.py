"""No host synchronisation in the search step (issue 15): every way Python can read
a tensor's value is counted while a step runs, and the soft supernet compiles into
one graph."""
import contextlib
import os
import sys

import pytest
import torch

from pynas.nn import SearchNetwork
from pynas.search import METHODS, SearchConfig

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
SOFT = ("darts", "darts-2nd", "single-level", "snas", "sdarts-rs", "sgas", "fixed")
HARD = ("gdas", "dsnas")
# torch.optim keeps its step counters as host tensors (not capturable) and reads them with
# .item(): no device synchronisation, so reads from its files are not counted.
OPTIM_DIR = os.path.dirname(torch.optim.__file__)


@contextlib.contextmanager
def counted_reads(monkeypatch):
    """Within the block, each call of a :data:`READS` method of a tensor, from
    outside torch.optim, is recorded as ``(method, caller file:line)``."""
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            caller = sys._getframe(1)
            if not caller.f_code.co_filename.startswith(OPTIM_DIR):
                calls.append((_name, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    try:
        yield calls
    finally:
        monkeypatch.undo()


def network(method, C=8, layers=3, **kw):
    m = METHODS[method]
    torch.manual_seed(0)
    kw = {"relaxation": m.relaxation, "aux_skip": m.aux_skip, **m.architecture_options(), **kw}
    return SearchNetwork(C=C, num_classes=3, layers=layers, steps=2, multiplier=2, in_channels=1,
                         generator=torch.Generator().manual_seed(0), **kw)


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 1, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("method", SOFT + HARD)
def test_a_search_step_reads_the_device_at_most_once(method, monkeypatch):
    model = network(method)
    strategy = METHODS[method].strategy(model, SearchConfig(epochs=1), 10)
    data = batches(4)
    strategy.step(data[0], data[1])  # the first step may read (masks moved, no sample drawn ahead yet)
    with counted_reads(monkeypatch) as calls:
        metrics = strategy.step(data[2], data[3])
    allowed = 1 if method in HARD else 0
    assert len(calls) <= allowed, calls
    if method in HARD:  # the one read is the transfer of the sampled operations of every cell type
        assert [name for name, _ in calls] == ["tolist"] and "arch.py" in calls[0][1]
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())  # read when logged


@pytest.mark.parametrize("method", HARD)
def test_hard_samples_of_every_cell_type_come_in_one_transfer_and_the_same_as_without_it(method, monkeypatch):
    """The sample drawn ahead (GDAS' weight step draws the next α step's) changes
    nothing: the step sees the samples a per-cell-type transfer would."""
    def run(ahead):
        model = network(method)
        strategy = METHODS[method].strategy(model, SearchConfig(epochs=1), 10)
        if not ahead:
            model.arch.sampling_ahead = lambda enabled=True: contextlib.nullcontext()
        actives = []
        weights_of = model.arch.weights_of
        model.arch.weights_of = lambda types, batch_size=None: (
            lambda out: actives.append({t: w.active for t, w in out.items()}) or out)(weights_of(types, batch_size))
        for train, val in zip(batches(6)[::2], batches(6)[1::2]):
            strategy.step(train, val)
        return actives, [a.detach().clone() for a in model.arch_parameters()]

    with_ahead, alpha = run(True)
    without, alpha_ref = run(False)
    assert with_ahead == without
    assert any(len(row) == 1 for a in with_ahead for rows in a.values() for row in rows)  # one op per edge
    for a, b in zip(alpha, alpha_ref):
        assert torch.equal(a, b)


def test_epoch_end_rewinds_a_sample_drawn_ahead():
    model = network("gdas")
    strategy = METHODS["gdas"].strategy(model, SearchConfig(epochs=1), 10)
    data = batches(2)
    before = model.arch.generator.get_state()
    strategy.arch_step(data[0], data[1])
    after_one_draw = model.arch.generator.get_state()
    model.arch.generator.set_state(before)
    strategy.step(data[0], data[1])  # α step draws one sample, the weight step two (its own, the next)
    strategy.epoch_end()
    model.arch.generator.set_state(model.arch.generator.get_state())
    # After the rewind the generator stands two draws on: where a search without drawing ahead stands.
    ref = network("gdas")
    ref.arch.generator.set_state(before)
    ref.arch.weights_of(["normal", "reduce"], 4)
    ref.arch.weights_of(["normal", "reduce"], 4)
    assert torch.equal(model.arch.generator.get_state(), ref.arch.generator.get_state())
    assert not torch.equal(after_one_draw, model.arch.generator.get_state())


def test_unchanged_masks_are_not_read_again_and_changed_ones_are(monkeypatch):
    model = network("darts")
    arch = model.arch
    assert arch.active("normal") is None
    with counted_reads(monkeypatch) as calls:
        arch.weights_of(["normal", "reduce"])
    assert calls == []
    arch.remove_op("normal", 3, "sep_conv_3x3")
    with counted_reads(monkeypatch) as calls:
        active = arch.weights("normal").active
    assert [name for name, _ in calls] == ["tolist"]
    assert active[3] == [k for k in range(len(arch.ops)) if arch.ops[k] != "sep_conv_3x3"]
    assert active[2] == list(range(len(arch.ops)))
    with torch.no_grad():  # an edit of the buffer from outside is seen too
        arch.mask("reduce")[0, 0] = False
    assert arch.active("reduce")[0] == list(range(1, len(arch.ops)))


# snas is left out: its samples come from the architecture's torch.Generator, an argument
# torch.compile cannot trace (a graph break at gumbel_softmax; without fullgraph it runs).
# The other relaxations on S2's two operations: what they change is the weights, not the
# operations (the full DARTS set traces in ~21 s, S2 in ~8).
@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"relaxation": "sigmoid", "space": "s2"}, {"sample_per": "sample", "space": "s2"}])
def test_the_soft_supernet_forward_compiles_into_one_graph(kw):
    # Training mode, forward and backward through Dynamo, AOTAutograd and the fake kernels
    # (aot_eager: no code generation; test_compile.py keeps one small Inductor check).
    torch._dynamo.reset()
    model = network("darts", C=8, layers=3, channels_last=False, **kw)
    x = batches(1)[0][0]
    params = [*model.arch_parameters(), *model.weight_parameters()]
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)  # fullgraph: a graph break raises
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out.square().sum(), params), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def _index_calls(fn):
    """The advanced-indexing calls (an index list becomes a host tensor copied to the device)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name == "aten::index"]


@pytest.mark.parametrize("method", ["darts", "gdas"])
def test_edges_pick_their_weight_columns_without_building_an_index_each_call(method):
    # weights[..., [1, ..., 7]] would build an index tensor on the host and copy it to the
    # device for every edge of every step; ranges are views, other column sets a cached index.
    model = network(method)
    x = batches(1)[0][0]
    model(x)  # first call: any index is built and cached here
    assert _index_calls(lambda: model(x)) == []
    edge = model.cells[0].edges[0]
    w = torch.arange(2 * 8, dtype=torch.float64).view(2, 8)
    for run in ([1, 2, 3, 4, 5, 6, 7], [4], [2, 5, 6], []):
        got = edge._columns(w, run)
        torch.testing.assert_close(got, w[..., run], rtol=0, atol=0)
        if len(run) == 1 or run == list(range(1, 8)):
            assert got.data_ptr() == w[..., run[0]:].data_ptr()  # a view
    assert list(edge._column_index) == [((2, 5, 6), w.device)]  # the one non-range set, cached
