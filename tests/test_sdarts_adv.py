"""SDARTS-ADV's adversarial perturbation (pynas.search.attack) against an attack
written out here from xiangning-chen/SmoothDARTS attacker/perturb.py
``Linf_PGD_alpha`` and sota/cnn/model_search.py ``clip``; Architecture.replaced;
the clip's renormalisation."""
import pytest
import torch

from pynas.arch import EdgeWeights, _clip_renormalise
from pynas.bench.search import EagerSupernet
from pynas.nn import SearchNetwork
from pynas.nn.networks import forward_with_weights
from pynas.search import AdversarialAttack, DartsFirstOrder, SearchConfig
from pynas.search import attack as attack_module

EPOCHS = 4


def tiny(masks=False, **kwargs):
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, **kwargs).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for a in model.arch.alphas.values():  # far from uniform: the attack has somewhere to go
            a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float64))
    if masks:
        model.arch.remove_op("normal", 0, 3)
        model.arch.fix_op("normal", 1, 5)
        model.arch.remove_edge("reduce", 4)
    return model


def batch(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def strategy_of(model, **options):
    attack = AdversarialAttack(**options)
    return DartsFirstOrder(model, SearchConfig(epochs=EPOCHS), steps_per_epoch=2, perturbation=attack), attack


# -- the attack written out -------------------------------------------------------------


def reference_softmax(alpha, mask):
    """softmax over each edge's available operations, 0 elsewhere and on removed edges."""
    out = torch.zeros_like(alpha)
    for e in range(alpha.shape[0]):
        cols = mask[e].nonzero().flatten()
        if len(cols):
            z = alpha[e, cols].exp()
            out[e, cols] = z / z.sum()
    return out


def reference_clip(w, mask):
    """SmoothDARTS' clip per edge over its available operations: argmax, clamp to [0, 1],
    the argmax set to 1 if the edge sums to 0, divided by the sum."""
    out = torch.zeros_like(w)
    for e in range(w.shape[0]):
        cols = mask[e].nonzero().flatten()
        if not len(cols):
            continue
        row = w[e, cols]
        largest = int(row.argmax())
        row = row.clamp(0, 1)
        if float(row.sum()) == 0.0:
            row[largest] = 1.0
        out[e, cols] = row / row.sum()
    return out


def reference_ce(model, x, y, weights):
    logits = forward_with_weights(model, x, [EdgeWeights(weights["reduce" if c.reduction else "normal"])
                                             for c in model.cells])
    return (logits.logsumexp(-1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


def reference_uniforms(model, seed, eps, draws=1):
    """The random start's U(−ε, ε) of the draws-th attack: a generator seeded alike, float64, per cell type."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        noise = {t: (torch.rand(model.arch.alphas[t].shape, generator=g, dtype=torch.float64) * 2 - 1) * eps
                 for t in model.arch.cell_types}
    return noise


def reference_attack(model, batch, eps, steps, uniforms, direction=1.0):
    """(Ā, every Ā a forward saw in order, loss_before, loss_after), in eval mode throughout.
    ``direction`` −1 descends instead (a case where the attack lowers the loss)."""
    x, y = batch
    arch = model.arch
    masks = {t: arch.mask(t) for t in arch.cell_types}
    model.eval()
    with torch.no_grad():
        clean = {t: reference_softmax(arch.alphas[t], masks[t]) for t in arch.cell_types}
        before = reference_ce(model, x, y, clean)
    current = {t: reference_clip(clean[t] + uniforms[t], masks[t]) for t in clean}
    seen = [clean]
    for _ in range(steps):
        seen.append(current)
        leaves = {t: w.clone().requires_grad_(True) for t, w in current.items()}
        grads = torch.autograd.grad(reference_ce(model, x, y, leaves), list(leaves.values()))
        with torch.no_grad():
            current = {t: reference_clip(clean[t] + (leaves[t] + direction * (2 * eps / steps) * g.sign() - clean[t])
                                         .clamp(-eps, eps), masks[t])
                       for t, g in zip(leaves, grads)}
    seen.append(current)
    with torch.no_grad():
        after = reference_ce(model, x, y, current)
    model.train()
    return (clean if before > after else current), seen, before, after


def recorded_forwards(model):
    """Every relaxed weight tensor the model reads (as tests/test_sdarts_sgas.py record_weights)."""
    seen = []
    weights_of = model.arch.weights_of

    def recording(cell_types, batch_size=None):
        drawn = weights_of(cell_types, batch_size)
        seen.append({t: w.weights.detach().clone() for t, w in drawn.items()})
        return drawn

    model.arch.weights_of = recording
    return seen


def assert_close(a, b):
    assert a.keys() == b.keys()
    for t in a:
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=1e-12)


# -- the attack ---------------------------------------------------------------------------


@pytest.mark.parametrize("masks", [False, True])
def test_attack_step_by_step_equals_smoothdarts(masks):
    model = tiny(masks)
    strategy, attack = strategy_of(model, epsilon=0.3, steps=3, seed=5)
    strategy.epochs_done = 2
    eps = 0.03 + (0.3 - 0.03) * 2 / EPOCHS
    data = batch(1)
    expected, expected_seen, before, after = reference_attack(model, data, eps, 3, reference_uniforms(model, 5, eps))
    seen = recorded_forwards(model)
    attack.prepare(strategy)
    attacked = attack.attack(strategy, data)
    assert attack.last_epsilon == pytest.approx(eps, abs=1e-15)
    assert len(seen) == len(expected_seen) == 1 + 3 + 1  # loss_before, the 3 steps' gradients, loss_after
    for got, want in zip(seen, expected_seen):
        assert_close(got, want)
    assert float(attack.last_loss_before) == pytest.approx(float(before), abs=1e-12)
    assert float(attack.last_loss_after) == pytest.approx(float(after), abs=1e-12)
    assert float(before) < float(after) and not bool(attack.last_reverted)  # the attack raised the loss: kept
    assert_close(attacked, expected)
    for t, w in attacked.items():
        mask = model.arch.mask(t)
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))
        assert torch.allclose(w.sum(-1), mask.any(-1).double(), atol=1e-12)  # rows sum to 1, removed edges to 0
        assert float((w - expected_seen[0][t]).abs().max()) > 0.5 * eps  # it moved


def test_random_start_is_seeded_and_projection_holds(monkeypatch):
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.3, steps=4, seed=3)
    eps = 0.03
    clips = []

    def recording_clip(w, mask):
        clips.append(w.detach().clone())
        return _clip_renormalise(w, mask)

    monkeypatch.setattr(attack_module, "_clip_renormalise", recording_clip)
    data = batch(2)
    for draw in (1, 2):  # the second attack's start is the generator's second draw
        clips.clear()
        uniforms = reference_uniforms(model, 3, eps, draws=draw)
        attack.prepare(strategy)
        attack.attack(strategy, data)
        clean = {t: model.arch.probabilities(t).detach() for t in model.arch.cell_types}
        types = list(model.arch.cell_types)
        assert len(clips) == len(types) * (1 + 4)
        for t, start in zip(types, clips[:len(types)]):
            assert torch.equal(start, clean[t] + uniforms[t])
            assert 0 < float(uniforms[t].abs().max()) <= eps
        for i, projected in enumerate(clips[len(types):]):
            # Before each clip the point lies in the ε-ball around Ā₀ (the clip may then leave it, as the code's).
            assert float((projected - clean[types[i % len(types)]]).abs().max()) <= eps + 1e-15


def test_epsilon_ramps_per_epoch_and_the_weight_step_sees_the_attack():
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.2, steps=2, seed=1)
    seen = recorded_forwards(model)
    results = []
    original = attack.attack
    attack.attack = lambda s, b: results.append(original(s, b)) or results[-1]
    for i in range(4):  # two epochs
        seen.clear()
        strategy.step(batch(10 + i), batch(20 + i))
        assert attack.last_epsilon == pytest.approx(0.03 + (0.2 - 0.03) * (i // 2) / EPOCHS, abs=1e-15)
        # α's step, the attack's 1 + 2 + 1 forwards, then the weight step's forward on exactly Ā.
        assert len(seen) == 1 + 4 + 1
        assert all(torch.equal(seen[-1][t], results[-1][t]) for t in model.arch.cell_types)
        if i % 2:
            strategy.epoch_end()


def test_an_attack_that_lowers_the_loss_is_reverted(monkeypatch):
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.3, steps=3, seed=4)
    eps, data = 0.03, batch(3)
    expected, _, before, after = reference_attack(model, data, eps, 3, reference_uniforms(model, 4, eps), -1.0)
    assert float(before) > float(after)
    descend = attack_module.AdversarialAttack._gradient
    monkeypatch.setattr(attack_module.AdversarialAttack, "_gradient",
                        staticmethod(lambda *args: [-g for g in descend(*args)]))
    seen = recorded_forwards(model)
    strategy.prepare_step()
    strategy.weight_step(data)
    assert bool(attack.last_reverted)
    assert float(attack.last_loss_before) == pytest.approx(float(before), abs=1e-12)
    assert float(attack.last_loss_after) == pytest.approx(float(after), abs=1e-12)
    assert all(torch.equal(seen[-1][t], seen[0][t]) for t in model.arch.cell_types)  # Ā₀ itself
    assert_close(seen[-1], expected)


def test_a_tie_keeps_the_attack(monkeypatch):
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.3, steps=2, seed=6)
    eps, data = 0.03, batch(4)
    expected_kept, expected_seen, _, _ = reference_attack(model, data, eps, 2, reference_uniforms(model, 6, eps))
    monkeypatch.setattr(attack_module.AdversarialAttack, "_loss",
                        staticmethod(lambda *args: torch.tensor(1.5, dtype=torch.float64)))
    attack.prepare(strategy)
    attacked = attack.attack(strategy, data)
    assert not bool(attack.last_reverted)
    assert_close(attacked, expected_seen[-1])  # the last iterate, not Ā₀


def test_the_attack_leaves_batchnorm_alpha_and_gradients_alone():
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.3, steps=2)
    model(batch(5)[0])  # running statistics away from their initial values
    model.classifier.eval()  # a module already in eval mode stays so
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    alphas = {t: a.detach().clone() for t, a in model.arch.alphas.items()}
    sentinels = {t: torch.full_like(a, 0.25) for t, a in model.arch.alphas.items()}
    for t, a in model.arch.alphas.items():
        a.grad = sentinels[t].clone()
    attack.prepare(strategy)
    attack.attack(strategy, batch(6))
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert not model.classifier.training
    assert all(m.training for m in model.modules() if m is not model.classifier)
    for t, a in model.arch.alphas.items():
        assert torch.equal(a.detach(), alphas[t]) and torch.equal(a.grad, sentinels[t])
    assert all(w.grad is None for w in model.weight_parameters())


def test_state_dict_reproduces_the_next_random_start():
    model = tiny()
    strategy, attack = strategy_of(model, epsilon=0.3, steps=1, seed=8)
    for i in range(3):
        strategy.step(batch(30 + i), batch(40 + i))
    state = strategy.state_dict()
    attack.prepare(strategy)
    following = {t: n.clone() for t, n in attack.noise.items()}
    other_strategy, other = strategy_of(tiny(), epsilon=0.3, steps=1, seed=99)
    other_strategy.load_state_dict(state)
    other.prepare(other_strategy)
    assert all(torch.equal(other.noise[t], following[t]) for t in following)
    assert not any(torch.equal(n, following[t]) for t, n in reference_uniforms(model, 99, 0.03).items())
    with pytest.raises(ValueError, match="attack_generator"):
        other.load_state_dict({})


def test_eager_and_fused_supernets_agree_under_the_attack():
    losses, params = [], []
    for eager in (False, True):
        model = tiny()
        strategy, _ = strategy_of(model, epsilon=0.3, steps=2, seed=2)
        if eager:
            strategy.forward = EagerSupernet(model)
        losses.append([float(strategy.step(batch(50 + i), batch(60 + i))["loss"]) for i in range(2)])
        params.append([p.detach().clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(*params))


@pytest.mark.parametrize("options, named", [
    (dict(steps=0), "--attack-steps"), (dict(steps=2.5), "--attack-steps"), (dict(steps=True), "--attack-steps"),
    (dict(epsilon=0.01), "--epsilon-alpha"), (dict(epsilon=1.5), "--epsilon-alpha"),
    (dict(epsilon=float("nan")), "--epsilon-alpha"), (dict(epsilon_start=-0.1), "epsilon_start"),
    (dict(seed="0"), "seed"),
])
def test_bad_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        AdversarialAttack(**options)


# -- data parallel ------------------------------------------------------------------------


def _rank(rank, store, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = tiny()
        strategy, attack = strategy_of(model, epsilon=0.3, steps=3, seed=5)
        x, y = batch(9, n=8)
        attack.prepare(strategy)
        attacked = attack.attack(strategy, (x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]))
        torch.save(dict(attacked=attacked, before=attack.last_loss_before, after=attack.last_loss_after), out[rank])
    finally:
        dist.destroy_process_group()


def test_ranks_attack_their_shards_as_one_batch(tmp_path):
    out = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Forked: the ranks start with pynas imported (spawning two fresh interpreters takes seconds).
    torch.multiprocessing.start_processes(_rank, args=(str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    ranks = [torch.load(path) for path in out]
    assert all(torch.equal(ranks[0]["attacked"][t], ranks[1]["attacked"][t]) for t in ranks[0]["attacked"])
    # Equal shards in eval mode: the mean of the ranks' gradients and losses is the whole batch's.
    model = tiny()
    expected, _, before, after = reference_attack(model, batch(9, n=8), 0.03, 3, reference_uniforms(model, 5, 0.03))
    assert_close(ranks[0]["attacked"], expected)
    assert float(ranks[0]["before"]) == pytest.approx(float(before), abs=1e-12)
    assert float(ranks[1]["after"]) == pytest.approx(float(after), abs=1e-12)


# -- Architecture.replaced and the clip ---------------------------------------------------


def test_replaced_weights_are_read_exactly():
    model = tiny(masks=True, edge_normalisation=True)
    arch = model.arch
    g = torch.Generator().manual_seed(1)
    given = {"normal": torch.rand(arch.alphas["normal"].shape, generator=g, dtype=torch.float64) * 3}  # not a simplex
    plain = arch.weights_of(["normal", "reduce"])
    with arch.noisy({"normal": torch.ones_like(given["normal"])}), arch.replaced(given):
        inside = arch.weights_of(["normal", "reduce"])
    mask = arch.mask("normal")
    assert torch.equal(inside["normal"].weights, torch.where(mask, given["normal"], torch.zeros_like(given["normal"])))
    assert inside["normal"].active == arch.active("normal") and inside["normal"].active is not None
    assert torch.equal(inside["normal"].edge, arch.edge_weights("normal"))
    assert torch.equal(inside["reduce"].weights, plain["reduce"].weights)  # a type not given: as usual
    assert torch.equal(arch.weights("normal").weights, plain["normal"].weights)  # and afterwards
    with pytest.raises(ValueError, match="'normal'"):
        with arch.replaced({"normal": torch.zeros(3, 8, dtype=torch.float64)}):
            pass
    with pytest.raises(ValueError, match="unknown cell type"):
        with arch.replaced({"nromal": given["normal"]}):
            pass


def test_replaced_weights_per_sample():
    model = tiny(sample_per="sample")
    w = model.arch.probabilities("normal").detach() * 0.5
    with model.arch.replaced({"normal": w}):
        got = model.arch.weights("normal", batch_size=3).weights
    assert got.shape == (3, *w.shape) and all(torch.equal(row, w) for row in got)


def test_clip_renormalise_divides_by_the_actual_sum():
    w = torch.tensor([[1e-13, -1.0, -0.5], [-0.3, -0.2, -0.1], [0.2, 0.6, -0.1], [0.5, 0.5, 0.5]],
                     dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    out = _clip_renormalise(w, mask)
    assert torch.equal(out[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # sums to 1, not 0.5
    torch.testing.assert_close(out, reference_clip(w, mask), rtol=0, atol=1e-15)
    assert torch.equal(out[1], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))  # the largest available
    assert torch.equal(out[3], torch.zeros(3, dtype=torch.float64))  # a removed edge stays removed
