"""``--cuda-graphs`` (issue 15): a search whose step is replayed from a graph computes
what the eager search computes.

On the CPU a graph is modelled by :class:`OpGraph`: capturing records the body's
operators (forward, backward and the optimisers, as aten and pynas ops) with their
tensors, and a replay runs that fixed list again on the same tensors, writing each
result into the tensor the capture produced, as a CUDA graph replays kernels on fixed
addresses. A value the host baked into the body (a Python number that should change,
a tensor made from host data, a host step count) then makes the replayed search differ
from the eager one, and a host read inside the body is recorded. With a GPU the same
comparison runs with real CUDA graphs."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import CUDA
from pynas.nn import SearchNetwork
from pynas.search import METHODS, SearchConfig
from pynas.search.cuda_graphs import GRAPH_METHODS, GraphedStep, check_cuda_graphs, make_capturable
from pynas.search.config import RunConfig

aten = torch.ops.aten
HOST_READS = (aten._local_scalar_dense.default,)
HOST_DATA = (aten.lift_fresh.default, aten.lift_fresh_copy.default)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.host_reads, self.host_data = [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in HOST_READS:
            self.host_reads.append(func)
        elif func in HOST_DATA:
            self.host_data.append(func)
        else:
            self.ops.append((func, args, kwargs, out))
        return out


class OpGraph:
    """A CPU model of ``cuda_capture`` for ``strategy``'s step body. Capturing runs
    the body once while recording, then puts back every tensor of the state it
    changed (a CUDA capture runs nothing). Records per capture: ``host_reads``
    (``.item()`` and kin) and ``host_data`` (tensors made from Python data)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.host_reads, self.host_data, self.ops = [], [], 0

    def _state(self):
        s = self.strategy
        tensors = [*s.model.parameters(), *s.model.buffers()]
        for opt in (s.w_opt, s.a_opt):
            for state in (opt.state.values() if opt is not None else ()):
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def __call__(self, body):
        state = self._state()
        saved = [t.detach().clone() for t in state]
        with _Recorder() as rec:
            outputs = body()
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
        self.host_reads += rec.host_reads
        self.host_data += rec.host_data
        self.ops = len(rec.ops)
        ops = rec.ops

        def replay():
            with torch.no_grad():
                for func, args, kwargs, out in ops:
                    new = func(*args, **kwargs)
                    inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                              if isinstance(t, torch.Tensor)}
                    for o, n in zip(tree_leaves(out), tree_leaves(new)):
                        # A view of an input stays one (its base is updated); in-place results are already there.
                        if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in inputs:
                            o.copy_(n)
            return outputs

        return replay


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Adam's capturable arithmetic (step count and bias correction on the
    parameters' device), which torch allows only on accelerators, on the CPU."""
    import sys

    monkeypatch.setattr(sys.modules["torch.optim.adam"], "_get_capturable_supported_devices",
                        lambda supports_xla=True: ["cpu", "cuda"])


def search(method, device="cpu", dtype=torch.float64, **kw):
    """A small supernet and its strategy, seeded (two calls give equal ones)."""
    m = METHODS[method]
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1,
                          generator=torch.Generator(device).manual_seed(0),
                          **{"relaxation": m.relaxation, **m.architecture_options(), **kw}).to(device, dtype)
    strategy = m.strategy(model, SearchConfig(epochs=2), 4)
    make_capturable(strategy.a_opt)
    return model, strategy


def epochs(device="cpu", dtype=torch.float64, n=2):
    """n epochs of 3 full batches and a smaller last one, as a loader without drop_last gives."""
    g = torch.Generator().manual_seed(1)

    def batch(size):
        return (torch.randn(size, 1, 6, 6, generator=g, dtype=dtype).to(device),
                torch.randint(0, 3, (size,), generator=g).to(device))
    return [[(batch(4), batch(4)) for _ in range(3)] + [(batch(2), batch(2))] for _ in range(n)]


def run(strategy, data, step=None):
    step = step or strategy.step
    metrics = []
    for epoch in data:
        for train, val in epoch:
            metrics.append(step(train, val if strategy.bilevel else None))
        strategy.epoch_end()
    return metrics


def assert_same_search(model_a, model_b, strategy_a, strategy_b, metrics_a, metrics_b, **tol):
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name, **tol)
    for opt_a, opt_b in ((strategy_a.w_opt, strategy_b.w_opt), (strategy_a.a_opt, strategy_b.a_opt)):
        for state_a, state_b in zip(opt_a.state.values() if opt_a else (), opt_b.state.values() if opt_b else ()):
            for k in state_a:
                torch.testing.assert_close(state_b[k], state_a[k], msg=k, **tol)
    for m_a, m_b in zip(metrics_a, metrics_b):
        for k in m_a:
            torch.testing.assert_close(m_b[k], m_a[k], **tol)


@pytest.mark.parametrize("method,kw", [(m, {}) for m in GRAPH_METHODS] + [
    ("darts", {"relaxation": "sigmoid"}), ("darts", {"partial_channels": 2})])
def test_replayed_search_is_the_eager_search(method, kw, capturable_on_cpu):
    model_a, strategy_a = search(method, **kw)
    metrics_a = run(strategy_a, epochs())
    model_b, strategy_b = search(method, **kw)
    graph = OpGraph(strategy_b)
    graphed = GraphedStep(strategy_b, capture=graph, warmup=2)
    metrics_b = run(strategy_b, epochs(), graphed)
    assert graph.ops > 100 and graph.host_reads == [] and graph.host_data == []
    # epoch 1: 2 warm-up steps, a capture replayed once, the small last batch eagerly;
    # epoch 2 (new learning rate): 1 eager step, a capture replayed twice, the last batch eagerly
    assert (graphed.eager_steps, graphed.captures, graphed.replays) == (5, 2, 3)
    assert strategy_b.global_step == strategy_a.global_step == 8
    assert_same_search(model_a, model_b, strategy_a, strategy_b, metrics_a, metrics_b, rtol=0, atol=0)


def test_the_cpu_graph_model_catches_a_host_step_count():
    # Adam without `capturable` reads its step count on the host: the bias correction of the capture's
    # step is baked in, so the replayed search drifts from the eager one (the model can fail).
    model_a, strategy_a = search("darts")
    strategy_a.a_opt.param_groups[0]["capturable"] = False
    metrics_a = run(strategy_a, epochs())
    model_b, strategy_b = search("darts")
    strategy_b.a_opt.param_groups[0]["capturable"] = False
    graph = OpGraph(strategy_b)
    metrics_b = run(strategy_b, epochs(), GraphedStep(strategy_b, capture=graph, warmup=2))
    assert graph.host_reads
    with pytest.raises(AssertionError):
        assert_same_search(model_a, model_b, strategy_a, strategy_b, metrics_a, metrics_b, rtol=0, atol=0)


def test_make_capturable_sets_a_resumed_adams_flag_and_keeps_its_step_count(capturable_on_cpu):
    _, strategy = search("darts")
    strategy.a_opt.param_groups[0]["capturable"] = False
    run(strategy, epochs(n=1))
    saved = strategy.a_opt.state_dict()
    assert saved["param_groups"][0]["capturable"] is False
    _, resumed = search("darts")
    resumed.a_opt.load_state_dict(saved)  # the group's flag comes back False
    make_capturable(resumed.a_opt)
    assert resumed.a_opt.param_groups[0]["capturable"] is True
    steps = [s["step"] for s in resumed.a_opt.state.values()]
    assert steps and all(float(s) == 4 for s in steps)


@pytest.mark.parametrize("kw,match", [
    (dict(method="darts", device="cpu"), "--device cuda"),
    (dict(method="gdas", device="cuda"), "--method gdas"),
    (dict(method="snas", device="cuda"), "--method snas"),
    (dict(method="sgas", device="cuda"), "--method sgas"),
    (dict(method="darts", device="cuda", relaxation="gumbel"), "--relaxation gumbel"),
    (dict(method="darts", device="cuda", world=2), "--nproc"),
    (dict(method="darts", device="cuda", compile=True), "--compile"),
    (dict(method="darts", device="cuda", checkpoint_cells=True), "--checkpoint-cells"),
    (dict(method="darts", device="cuda", tau_schedule="linear"), "--tau-schedule"),
])
def test_runs_a_graph_cannot_replay_are_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        check_cuda_graphs(**kw)


def test_search_refuses_cuda_graphs_on_the_cpu_before_any_work():
    with pytest.raises(ValueError, match="--cuda-graphs needs --device cuda"):
        RunConfig(cuda_graphs=True).validate()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")
@pytest.mark.parametrize("method", GRAPH_METHODS)
def test_cuda_graph_replays_the_eager_search_on_the_gpu(method):
    model_a, strategy_a = search(method, "cuda", torch.float32)
    metrics_a = run(strategy_a, epochs("cuda", torch.float32))
    model_b, strategy_b = search(method, "cuda", torch.float32)
    graphed = GraphedStep(strategy_b, warmup=2)
    metrics_b = run(strategy_b, epochs("cuda", torch.float32), graphed)
    assert (graphed.eager_steps, graphed.captures, graphed.replays) == (5, 2, 3)
    assert_same_search(model_a, model_b, strategy_a, strategy_b, metrics_a, metrics_b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")
def test_cuda_graphs_search_command_ends_where_the_eager_one_does(tmp_path):
    from pynas.cli import main

    argv = ["search", "--device", "cuda", "--epochs", "2", "--C", "4", "--layers", "3", "--steps", "2",
            "--batch-size", "64", "--quiet"]
    assert main([*argv, "--cuda-graphs", "--out", str(tmp_path / "graphs")]) == 0
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("eager", "graphs"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bench_times_the_replayed_steps_only():
    from pynas.bench.search import time_graphed

    size = dict(batch_size=2, C=4, layers=3, image_size=8, device="cpu")
    # A stand-in capture that runs the body again at each replay: the benchmark's accounting on the CPU.
    result = time_graphed("darts", warmup=1, steps=2, capture=lambda body: body, **size)
    assert len(result["steps_ms"]) == 2 and result["captures"] == 1 and result["eager_steps"] == 3
    assert result["step_ms"] > 0 and result["peak_mb"] is None
    with pytest.raises(ValueError, match="--device cuda"):
        time_graphed("darts", warmup=1, steps=2, **size)


def test_bench_refuses_graphs_with_checkpointed_cells_before_measuring():
    from pynas.bench.search import run_device

    with pytest.raises(ValueError, match="--checkpoint-cells"):
        run_device("cuda", ["darts"], {}, checkpoint_cells=True, cuda_graphs=True)
