"""Data-parallel gradient averaging in buckets: one all_reduce per bucket, the
gradients each rank steps with unchanged by the packing."""
import pytest
import torch
import torch.distributed as dist

from pynas.nn import SearchNetwork
from pynas.search import METHODS, SearchConfig
from pynas.search import reduction, strategies


def tiny(method):
    m = METHODS[method]
    torch.manual_seed(0)
    return SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, relaxation=m.relaxation,
                         generator=torch.Generator().manual_seed(0), aux_skip=m.aux_skip, **m.architecture_options())


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)


@pytest.fixture
def group(tmp_path):
    """A real one-process gloo group (what `sync` checks for)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def expected_buckets(sizes, limit):
    """Greedy packing in order, as documented: a new bucket when the next tensor would overflow."""
    count, used = 0, None
    for n in sizes:
        if used is None or used + n > limit:
            count, used = count + 1, 0
        used += n
    return count


class _Done:
    """What an asynchronous all_reduce returns, for a reduction done at once."""

    def wait(self):
        return True


def gradients_after_step(method, monkeypatch, bucket_bytes=None, calls=None, overlap=False):
    model = tiny(method)
    strategy = METHODS[method].strategy(model, SearchConfig(epochs=1), 10)
    strategy.overlap_reduction = overlap
    strategy.w_opt.step = lambda *a, **k: None  # keep the gradients as the optimisers would see them
    strategy.a_opt.step = lambda *a, **k: None
    if bucket_bytes is not None:
        monkeypatch.setattr(strategies, "BUCKET_BYTES", bucket_bytes)
        monkeypatch.setattr(reduction, "OVERLAP_BUCKET_BYTES", bucket_bytes)
    if calls is not None:
        # Two ranks holding the same gradients: the sum is twice each, the average each itself.
        def all_reduce(t, *a, async_op=False, **k):
            calls.append(t.numel())
            t.add_(t)
            return _Done() if async_op else None
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        monkeypatch.setattr(dist, "all_reduce", all_reduce)
    strategy.step(batch(0), batch(1))
    zeros_if_none = lambda params: [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    return zeros_if_none(strategy.weights), zeros_if_none(strategy.alphas), strategy


@pytest.mark.parametrize("method, limit", [("darts", 16 * 1024), ("single-level", 16 * 1024), ("darts", 1)])
def test_one_all_reduce_per_bucket_after_backward(method, limit, group, monkeypatch):
    # Small buckets, so that the weights need several; 1 byte: every gradient alone (reduced in place).
    reference_w, reference_a, _ = gradients_after_step(method, monkeypatch)  # no averaging: world 1
    calls = []
    weights, alphas, strategy = gradients_after_step(method, monkeypatch, limit, calls)
    w_bytes = [p.numel() * 4 for p in strategy.weights]
    a_bytes = [a.numel() * 4 for a in strategy.alphas]
    if method == "darts":  # α's step, then the weights' step: α's gradients in one bucket
        expected = [None if limit < max(a_bytes) else sum(a.numel() for a in strategy.alphas)] * (
            len(a_bytes) if limit < max(a_bytes) else 1) + [None] * expected_buckets(w_bytes, limit)
    else:  # one backward: weights and α averaged together
        expected = [None] * expected_buckets(w_bytes + a_bytes, limit)
    assert len(calls) == len(expected)
    if limit > 1:
        assert len(calls) < len(w_bytes) // 4
    if expected[0] is not None:
        assert calls[0] == expected[0]
    assert sum(calls) == sum(p.numel() for p in strategy.weights + strategy.alphas)
    for got, want in zip(weights + alphas, reference_w + reference_a):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["darts", "darts-2nd", "single-level", "gdas"])
def test_weight_gradients_are_averaged_while_backward_runs(method, group, monkeypatch):
    reference_w, reference_a, _ = gradients_after_step(method, monkeypatch)  # no averaging: world 1
    calls = []
    weights, alphas, strategy = gradients_after_step(method, monkeypatch, 4 * 1024, calls, overlap=True)
    reducer = strategy.weight_reduction()
    n = len(strategy.weights)
    # Several buckets, in reverse parameter order, each launched once; the first before backward had every
    # gradient (overlap); gdas' unselected operations have none, so their buckets wait for the end.
    assert len(reducer.buckets) >= 3 and sorted(i for b in reducer.buckets for i in b) == list(range(n))
    assert reducer.buckets[0][0] == n - 1 and len(reducer.launches) == len(reducer.buckets)
    assert reducer.launches[0] < n // 2
    # The weights' buckets, then α's (single-level: one backward) or α's first (bi-level: its own step);
    # DARTS' second order differentiates the weights three more times for α: no launch for those.
    weight_calls = [sum(strategy.weights[i].numel() for i in b) for b in reducer.buckets]
    assert sorted(calls) == sorted(weight_calls + [sum(a.numel() for a in strategy.alphas)])
    for got, want in zip(weights + alphas, reference_w + reference_a):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_default_buckets_hold_the_darts_supernet_in_a_few_calls():
    model = SearchNetwork(C=16, num_classes=10, layers=8)
    grads = [torch.zeros_like(p) for p in model.weight_parameters()]
    buckets = strategies.gradient_buckets(grads)
    assert len(grads) > 500 and len(buckets) == 1  # 1.9 M float32 weights: 7.4 MB, under 25 MB
    small = strategies.gradient_buckets(grads, 2 ** 20)
    assert len(small) == expected_buckets([g.numel() * 4 for g in grads], 2 ** 20) >= 7
    assert [id(g) for b in small for g in b] == [id(g) for g in grads] and all(sum(g.numel() * 4 for g in b) <= 2 ** 20 for b in small)


# -- two processes: every rank's α, weights and samples checked ---------------

def _rank_worker(rank, world, port, argv, fault):
    """A rank of `pynas search --nproc 2` on a small slice of the digits whose second epoch has a
    fault injected: "samples" reseeds rank 1's architecture generator (its Gumbel samples differ from
    rank 0's); "weights" averages α's gradients only (the weights' never)."""
    from torch.utils.data import Subset

    from pynas.analysis import draw
    from pynas.cli import main
    from pynas.search import distributed, run

    search_data = run.search_data

    def small(cfg):
        train, val, info = search_data(cfg)
        return Subset(train, range(96)), Subset(val, range(32)), info

    def inject(self):
        if fault == "samples" and rank == 1:
            self.model.arch.generator.manual_seed(12345)  # the run seeded it with --seed + 1
        if fault == "weights":
            self.strategy.weight_reduction = lambda: None
            alphas = {id(a) for a in self.strategy.alphas}
            self.strategy.sync = lambda params: strategies.Strategy.sync(
                self.strategy, [p for p in params if id(p) in alphas])

    epoch = run.SearchRun._epoch

    def faulty_second_epoch(self):
        if self.epoch == 1:
            inject(self)
        epoch(self)

    run.search_data = small
    run.SearchRun._epoch = faulty_second_epoch
    draw.draw_search_cells = lambda run, genotype: None  # no matplotlib import
    distributed._worker(rank, world, port, main, argv)


def two_ranks(tmp_path, method, fault, *extra):
    import json

    from pynas.search import distributed

    out = tmp_path / method
    argv = ["search", "--method", method, "--epochs", "2", "--C", "2", "--layers", "3", "--steps", "2",
            "--batch-size", "16", "--out", str(out), "--quiet", *extra]
    torch.multiprocessing.spawn(_rank_worker, args=(2, distributed._free_port(), argv, fault), nprocs=2)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    healthy, faulty = records
    assert healthy["ranks_agree"] is True
    for name in ("weights", "alpha", "samples"):
        a, b = healthy["rank_checksums"][name]
        assert a == b and a != 0
    assert faulty["ranks_agree"] is False
    return {name: tuple(values) for name, values in faulty["rank_checksums"].items()}


def agree(pair):
    return pair[0] == pair[1]


@pytest.mark.parametrize("method, reduction", [("gdas", "--overlap-reduction"), ("dsnas", "--no-overlap-reduction")])
def test_ranks_drawing_different_hard_samples_are_caught(tmp_path, method, reduction):
    # Gradients are still averaged (during backward, through gloo's asynchronous all_reduce, or after it),
    # so weights and α stay identical: only the samples tell.
    checksums = two_ranks(tmp_path, method, "samples", reduction)
    assert not agree(checksums["samples"])
    assert agree(checksums["weights"]) and agree(checksums["alpha"])


def test_weight_gradients_not_averaged_are_caught(tmp_path):
    # α's averaged gradient keeps α identical (what the old check compared); the weights drift apart.
    checksums = two_ranks(tmp_path, "snas", "weights")
    assert not agree(checksums["weights"])
    assert agree(checksums["alpha"]) and agree(checksums["samples"])


@pytest.mark.parametrize("method, extra", [
    ("fairdarts", ()),  # σ(α), the zero-one loss in both steps, the threshold rule
    # β-DARTS' term, SDARTS-ADV's attack (its start drawn alike, its gradient and losses averaged), DARTS-' skip
    ("darts", ("--regularizer", "beta-decay", "--perturbation", "adversarial", "--aux-skip")),
    ("lambda-darts", ("--layers", "4", "--lambda", "1.0")),  # g_l averaged before p: the same p on every rank
    ("drnas", ("--C", "12")),  # the same Dirichlet samples and, at the stage boundary, the same widening
])
def test_the_composed_parts_keep_ranks_in_step(tmp_path, method, extra):
    import json

    from pynas.search import distributed

    out = tmp_path / method
    argv = ["search", "--method", method, "--epochs", "2", "--C", "2", "--layers", "3", "--steps", "2",
            "--batch-size", "16", "--out", str(out), "--quiet", *extra]
    torch.multiprocessing.spawn(_rank_worker, args=(2, distributed._free_port(), argv, "none"), nprocs=2)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["ranks_agree"] for r in records] == [True, True]
    for r in records:
        assert all(a == b and a != 0 for a, b in r["rank_checksums"].values())
