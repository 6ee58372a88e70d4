"""OLES (pynas.search.oles) against the authors' code (PasaLab/oles train_search.py) written out by hand:
the similarity against numpy's cosine, the windows' 21-over-20 rule, the gradient compared (stored clipped
training gradient + validation gradient), freezing (no update afterwards, momentum and weight decay
included), the state dict round trip and bad options."""
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pynas.nn import SearchNetwork
from pynas.search import SearchConfig
from pynas.search import oles as oles_module
from pynas.search.oles import Oles, SimilarityWindows, operation_similarity

SEP, DIL = ("sep_conv_3x3", "sep_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1).double()


def batches(n, seed=1):
    """``n`` (training batch, validation batch) pairs."""
    g = torch.Generator().manual_seed(seed)

    def batch():
        return torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    return [(batch(), batch()) for _ in range(n)]


def strategy(model, **options):
    return Oles(model, SearchConfig(epochs=2, w_momentum=0.9, w_weight_decay=3e-4), steps_per_epoch=10, **options)


def run(s, data):
    for train, val in data:
        s.step(train, val)


def numpy_cosine_dim0(a, b):
    """cosine_similarity(a, b, dim=0) written out: per position of the other dims, a·b / (|a| |b|)."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def test_similarity_is_the_mean_over_tensors_of_the_mean_dim0_cosine():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 1, 3, 3), (4, 4, 1, 1), (4, 1, 5, 5)]
    current = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    stored = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    expected = np.mean([numpy_cosine_dim0(c.numpy(), s.numpy()).mean() for c, s in zip(current, stored)])
    assert float(operation_similarity(current, stored)) == pytest.approx(expected, rel=1e-12)


def test_windows_judge_window_plus_one_similarities_over_window():
    # window 4, threshold 0.5. Op 0 sees 7/16 each time: its mean (0.4375) is below 0.5, but the code judges
    # 5 · 7/16 / 4 = 0.546875, not below. Op 1 sees 3/8: 5 · 3/8 / 4 = 0.46875, frozen at the 5th, not the 4th.
    w = SimilarityWindows(2, window=4, threshold=0.5)
    for _ in range(4):
        assert w.add([0, 1], torch.tensor([7 / 16, 3 / 8], dtype=torch.float64)) == []
    assert w.add([0, 1], torch.tensor([7 / 16, 3 / 8], dtype=torch.float64)) == [(1, 0.46875)]
    # Both windows restart from zero: op 0 now sees 1/4 five times, judged 5/4 / 4 = 0.3125 at the 10th.
    for _ in range(4):
        assert w.add([0], torch.tensor([0.25], dtype=torch.float64)) == []
    assert w.add([0], torch.tensor([0.25], dtype=torch.float64)) == [(0, 0.3125)]


def test_windows_count_each_operation_on_its_own():
    w = SimilarityWindows(2, window=1, threshold=0.0)
    assert w.add([0], torch.tensor([-1.0], dtype=torch.float64)) == []
    assert w.add([1], torch.tensor([-1.0], dtype=torch.float64)) == []
    assert w.add([0], torch.tensor([-1.0], dtype=torch.float64)) == [(0, -2.0)]  # op 1 has seen one
    assert w.add([1], torch.tensor([-1.0], dtype=torch.float64)) == [(1, -2.0)]


def test_current_gradient_is_stored_clipped_training_plus_validation(monkeypatch):
    model = tiny_model()
    s = strategy(model)
    data = batches(2)
    seen = []
    monkeypatch.setattr(oles_module, "operation_similarity",
                        lambda current, stored: seen.append((current, stored)) or torch.tensor(1.0))
    s.step(*data[0])
    assert seen == []  # nothing stored before the first weight step
    ops = s.operations
    # The first weight step's clipped gradients (clip_grad_norm_ in place, as the code's clip before storing).
    training = {id(p): p.grad.clone() for op in ops for p in op["params"]}
    reference = copy.deepcopy(model)  # the validation gradient at the weights and α the second α step sees
    ref_params = dict(zip([id(p) for p in model.parameters()], reference.parameters()))
    checked = [p for op in ops for p in op["params"]]
    loss = F.cross_entropy(reference(data[1][1][0]), data[1][1][1])
    validation = torch.autograd.grad(loss, [ref_params[id(p)] for p in checked])
    validation = {id(p): g for p, g in zip(checked, validation)}
    s.step(*data[1])
    assert len(seen) == len(ops)
    assert not any(op["op"] == "skip_connect" for op in ops)  # the stride-2 FactorizedReduce is not checked
    for op, (current, stored) in zip(ops, seen):
        for p, c, st in zip(op["params"], current, stored):
            assert torch.equal(st, training[id(p)])
            torch.testing.assert_close(c, training[id(p)] + validation[id(p)], rtol=1e-12, atol=1e-14)


def sep_low_dil_high(current, stored):
    """The real similarity moved down by 1 for separable convs (4 tensors), up by 1 for dilated ones (2)."""
    return operation_similarity(current, stored) + (-1.0 if len(current) == 4 else 1.0)


def test_freezing_at_the_window_boundary_and_frozen_ops_move_no_more(monkeypatch):
    monkeypatch.setattr(oles_module, "operation_similarity", sep_low_dil_high)
    model = tiny_model()
    s = strategy(model, window=2, threshold=0.4)
    data = batches(7)
    run(s, data[:3])  # similarities at steps 1 and 2: the decision needs a third
    assert s.frozen_ops == []
    s.step(*data[3])
    expected = {(c, "normal" if c == 0 else "reduce", e, op) for c in range(3) for e in range(5) for op in SEP}
    assert {(d["cell"], d["cell_type"], d["edge"], d["op"]) for d in s.frozen_ops} == expected
    assert len(s.frozen_ops) == len(expected) and all(d["step"] == 3 and d["epoch"] == 0 for d in s.frozen_ops)
    assert all(d["similarity"] < 0.4 for d in s.frozen_ops)
    frozen = [p for op in s.operations if op["op"] in SEP for p in op["params"]]
    live = [p for op in s.operations if op["op"] in DIL for p in op["params"]]
    before = [p.detach().clone() for p in frozen]
    momentum = [s.w_opt.state[p]["momentum_buffer"].clone() for p in frozen]
    live_before = [p.detach().clone() for p in live]
    run(s, data[4:])
    for p, b, m in zip(frozen, before, momentum):
        assert torch.equal(p, b) and p.grad is None
        assert torch.equal(s.w_opt.state[p]["momentum_buffer"], m)
    assert all(not torch.equal(p, b) for p, b in zip(live, live_before))
    assert len(s.frozen_ops) == len(expected)  # a frozen op is judged no more


# Resumed after 3 steps: mid-window (sums of two similarities, the stored gradients), the decision at step 3
# still to come; after 5: the separable convs frozen, which the resumed run must leave as they are.
@pytest.mark.parametrize("resume_after", [3, 5])
def test_state_dict_round_trip_resumes_bit_identically(monkeypatch, resume_after):
    monkeypatch.setattr(oles_module, "operation_similarity", sep_low_dil_high)
    data = batches(8)
    straight = strategy(tiny_model(), window=2)
    run(straight, data)

    first = strategy(tiny_model(), window=2)
    run(first, data[:resume_after])
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "strategy": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = strategy(tiny_model(seed=5), window=2)
    resumed.model.load_state_dict(state["model"])
    resumed.load_state_dict(state["strategy"])
    run(resumed, data[resume_after:])

    assert resumed.frozen_ops == straight.frozen_ops and len(straight.frozen_ops) == 30
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options, message", [
    (dict(window=0), "--oles-window"), (dict(window=2.5), "--oles-window"), (dict(window=True), "--oles-window"),
    (dict(threshold=float("nan")), "--oles-threshold"), (dict(threshold=1.5), "--oles-threshold"),
    (dict(threshold="0.4"), "--oles-threshold"), (dict(threshold=True), "--oles-threshold"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        strategy(tiny_model(), **options)


# -- data parallel ------------------------------------------------------------------------


def _rank(rank, store, out, overlap):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        seen = []

        def recording(current, stored):  # the real similarity, its inputs kept
            seen.append(([c.clone() for c in current], [s.clone() for s in stored]))
            return sep_low_dil_high(current, stored)
        oles_module.operation_similarity = recording  # in this forked rank only
        s = strategy(tiny_model(), window=2)
        s.overlap_reduction = overlap
        run(s, batches(6, seed=10 + rank))  # each rank its own shards
        params = [p.detach() for p in s.model.parameters()]  # (BatchNorm's statistics are each rank's own)
        torch.save(dict(seen=seen, frozen_ops=s.frozen_ops, params=params), out[rank])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overlap", [False, True])
def test_ranks_compare_averaged_gradients_and_freeze_alike(tmp_path, overlap):
    out = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.multiprocessing.start_processes(_rank, args=(str(tmp_path / "store"), out, overlap), nprocs=2,
                                          start_method="fork")
    ranks = [torch.load(path) for path in out]
    # Different shards, bit-identical comparisons: the stored and the validation gradients are both averaged.
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) > 0
    for (c0, s0), (c1, s1) in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert all(torch.equal(a, b) for a, b in zip(c0 + s0, c1 + s1))
    assert ranks[0]["frozen_ops"] == ranks[1]["frozen_ops"] and len(ranks[0]["frozen_ops"]) == 30
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
