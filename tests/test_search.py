"""Search strategies and runs on tiny networks."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pynas.cli import main
from pynas.nn import SearchNetwork
from pynas.search import METHODS, DartsFirstOrder, DartsSecondOrder, SearchConfig, SingleLevel
from pynas.search.config import RunConfig
from pynas.search.run import SearchRun


def tiny(relaxation="softmax", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, relaxation=relaxation,
                          generator=torch.Generator().manual_seed(0), **kw)
    return model.to(dtype)


def batch(seed, n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def test_darts_takes_the_alpha_step_first_on_the_validation_batch():
    model = tiny()
    strategy = DartsFirstOrder(model, SearchConfig(epochs=1), 1)
    seen = []
    forward = model.forward
    model.forward = lambda x: seen.append((x.data_ptr(), torch.is_grad_enabled(), [a.requires_grad for a in model.arch_parameters()])) or forward(x)
    train, val = batch(0), batch(1)
    alpha_before = [a.detach().clone() for a in model.arch_parameters()]
    weights_before = [w.detach().clone() for w in model.weight_parameters()]
    order = []
    arch_step, weight_step = strategy.arch_step, strategy.weight_step
    strategy.arch_step = lambda t, v: order.append(("arch", v is val, [torch.equal(w, w0) for w, w0 in zip(model.weight_parameters(), weights_before)])) or arch_step(t, v)
    strategy.weight_step = lambda t: order.append(("weight", t is train, [torch.equal(a, a0) for a, a0 in zip(model.arch_parameters(), alpha_before)])) or weight_step(t)
    strategy.step(train, val)
    assert [o[0] for o in order] == ["arch", "weight"]
    assert order[0][1] and all(order[0][2])  # α step on val, before any weight moved
    assert order[1][1] and not any(order[1][2])  # weight step on train, after α moved
    assert [s[0] for s in seen] == [val[0].data_ptr(), train[0].data_ptr()]


def test_single_level_uses_one_batch_for_both():
    model = tiny()
    strategy = SingleLevel(model, SearchConfig(epochs=1), 1)
    seen = []
    forward = model.forward
    model.forward = lambda x: seen.append(x.data_ptr()) or forward(x)
    alpha0 = [a.detach().clone() for a in model.arch_parameters()]
    w0 = [w.detach().clone() for w in model.weight_parameters()]
    train = batch(0)
    strategy.step(train, batch(1))
    assert seen == [train[0].data_ptr()]
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alpha0))
    assert any(not torch.equal(a, b) for a, b in zip(model.weight_parameters(), w0))


def test_second_order_alpha_gradient_matches_exact_hessian_vector_product(monkeypatch):
    # Finite differences of a gradient need a smooth loss: ReLU kinks crossed by
    # w ± R·v would dominate them. Smooth activations and no max pool here.
    monkeypatch.setattr(F, "relu", lambda x, inplace=False: F.softplus(x, beta=4.0))
    model = tiny(dtype=torch.float64, space=["skip_connect", "sep_conv_3x3", "avg_pool_3x3", "dil_conv_3x3"])
    config = SearchConfig(epochs=1)
    strategy = DartsSecondOrder(model, config, 1)
    train, val = batch(0, dtype=torch.float64), batch(1, dtype=torch.float64)
    strategy.weight_step(train)  # a momentum buffer, so the virtual step uses it
    strategy.a_opt.step = lambda: None  # keep the computed α gradient
    weights, alphas = strategy.weights, strategy.alphas
    w0 = [w.detach().clone() for w in weights]
    eta = strategy.w_opt.param_groups[0]["lr"]

    # Exact: w' by hand, then ∇α L_val(w') − η ∇α(∇w L_train(w)·v) with v = ∇w' L_val(w').
    loss = F.cross_entropy(model(train[0]), train[1])
    g = torch.autograd.grad(loss, weights)
    with torch.no_grad():
        for w, gi in zip(weights, g):
            buf = strategy.w_opt.state[w]["momentum_buffer"]
            w.sub_(eta * (config.w_momentum * buf + gi + config.w_weight_decay * w))
    loss = F.cross_entropy(model(val[0]), val[1])
    grads = torch.autograd.grad(loss, alphas + weights)
    g_alpha, v = grads[: len(alphas)], grads[len(alphas):]
    with torch.no_grad():
        for w, w_orig in zip(weights, w0):
            w.copy_(w_orig)
    loss = F.cross_entropy(model(train[0]), train[1])
    gw = torch.autograd.grad(loss, weights, create_graph=True)
    hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(gw, v)), alphas)
    expected = [ga - eta * h for ga, h in zip(g_alpha, hvp)]

    strategy.arch_step(train, val)
    got = torch.cat([a.grad.flatten() for a in alphas])
    want = torch.cat([e.flatten() for e in expected])
    second = eta * torch.cat([h.flatten() for h in hvp])
    # The finite difference (error O(R^2)) recovers the Hessian term to within 1 %.
    assert (got - want).norm() < 0.01 * second.norm()
    for w, w_orig in zip(weights, w0):  # restored exactly
        assert torch.equal(w, w_orig)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_and_moves_what_it_should(method):
    m = METHODS[method]
    if method == "drnas":  # its first stage: partial channels 6 without edge normalisation, no `none`
        torch.manual_seed(0)
        model = SearchNetwork(C=12, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1,
                              space="darts-no-none", relaxation=m.relaxation, partial_channels=6,
                              edge_normalisation=False, generator=torch.Generator().manual_seed(0))
    elif method == "lambda-darts":  # two normal cells
        torch.manual_seed(0)
        model = SearchNetwork(C=2, num_classes=3, layers=4, steps=2, multiplier=2, in_channels=1)
    else:
        model = tiny(m.relaxation, aux_skip=m.aux_skip, **m.architecture_options())
    strategy = m.strategy(model, SearchConfig(epochs=2 if method == "drnas" else 1), 3)  # DrNAS: a stage each
    alpha0 = [a.detach().clone() for a in model.arch_parameters()]
    for i in range(3):
        m = strategy.step(batch(2 * i), batch(2 * i + 1))
        assert 0 <= m["acc"] <= 1 and m["loss"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alpha0)]
    if method in ("fixed", "uniform"):
        assert not any(moved) and all(float(a.abs().max()) == 0 for a in model.arch_parameters())
    else:  # SGAS too: α trains from the first epoch, as its public code
        assert all(moved)


def _run(tmp_path, name, epochs, resume=False, **kw):
    kw = {"batch_size": 128, "C": 2, "layers": 3, **kw}
    cfg = RunConfig(epochs=epochs, steps=2, out=str(tmp_path / name), **kw)
    return SearchRun(cfg, resume=str(tmp_path / name) if resume else None, quiet=True)


@pytest.fixture
def small_digits(monkeypatch):
    """Searches on a slice of the digits (a few steps an epoch): the run's logic, not its accuracy, is tested."""
    from torch.utils.data import Subset

    from pynas.search import run

    search_data = run.search_data

    def small(cfg):
        train, val, info = search_data(cfg)
        return Subset(train, range(48)), Subset(val, range(32)), info

    monkeypatch.setattr(run, "search_data", small)


TIMINGS = ("epoch_seconds", "images_per_second")


def untimed(record: dict) -> dict:
    """A metrics record without its wall-clock timings (which no two runs share)."""
    assert all(isinstance(record[k], float) and record[k] > 0 for k in TIMINGS)
    return {k: v for k, v in record.items() if k not in TIMINGS}


def assert_same(a, b, where="state"):
    """Bit-identical nested state: tensors, numbers, containers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def full_state(run):
    """Everything a search continues from: weights, α, buffers (masks, BN statistics), both optimisers,
    the schedule, the strategy's own state, the generators, the temperature."""
    from pynas.search.run import _rng_state

    return {"epoch": run.epoch, "model": run.model.state_dict(), "strategy": run.strategy.state_dict(),
            "rng": _rng_state(run.model), "temperature": run.model.arch.temperature}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resumed_run_continues_with_the_full_state(tmp_path, small_digits, method):
    import shutil

    kw = dict(first_decision=1, decision_freq=1) if method == "sgas" else {}
    if method == "drnas":  # its stages' K 6 and 4 divide C; the resumption crosses the stage boundary
        kw = dict(C=12, space="darts-no-none")
    if method == "lambda-darts":  # two normal cells
        kw = dict(layers=4)
    full = _run(tmp_path, "full", 2, method=method, batch_size=16, **kw)
    full._epoch()  # epoch 1, checkpointed ...
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # ... and a process that died right after it
    full.run()
    resumed = _run(tmp_path, "killed", 2, resume=True)
    assert resumed.epoch == 1
    resumed.run()
    assert_same(full_state(full), full_state(resumed))
    assert_same(untimed(full.last_record), untimed(resumed.last_record), "record")  # the last epoch's metrics, exactly
    if method == "sgas":
        assert full.last_record["decisions"]  # a decision made after the resumption
    lines = [json.loads(l) for l in open(tmp_path / "killed" / "metrics.jsonl")]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert (tmp_path / "killed" / "genotype.txt").read_text() == (tmp_path / "full" / "genotype.txt").read_text()


def test_ctrl_c_saves_exits_130_and_resume_on_the_command_line_continues(tmp_path, small_digits, monkeypatch,
                                                                          capsys):
    from pynas.io import load_checkpoint
    from pynas.search import strategies

    argv = ["--method", "gdas", "--epochs", "2", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "16",
            "--quiet"]
    assert main(["search", *argv, "--out", str(tmp_path / "full")]) == 0
    step, calls = strategies.Strategy.step, []

    def interrupted_in_epoch_2(self, *a):  # 3 steps an epoch: Ctrl-C in the second step of epoch 2
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(self, *a)

    monkeypatch.setattr(strategies.Strategy, "step", interrupted_in_epoch_2)
    out = tmp_path / "interrupted"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:  # what the shell sees: `pynas` exits with it
        main(["search", *argv, "--out", str(out)])
    assert exit.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: the last finished epoch (1) is saved" in err and f"pynas search --resume {out}" in err
    assert load_checkpoint(str(out / "checkpoint.pt"), "search", {})["epoch"] == 1
    assert not (out / "genotype.txt").exists()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0  # the patched step passes the 6th call on
    assert len(calls) == 5 + 3
    assert_same(load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"), "search", {}),
                load_checkpoint(str(out / "checkpoint.pt"), "search", {}), "checkpoint")
    assert [untimed(json.loads(l)) for l in open(out / "metrics.jsonl")] == \
        [untimed(json.loads(l)) for l in open(tmp_path / "full" / "metrics.jsonl")]
    assert (out / "genotype.txt").read_text() == (tmp_path / "full" / "genotype.txt").read_text()


def test_cli_reports_bad_arguments_in_one_sentence(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--method", "nope"])
    assert main(["search", "--epochs", "0", "--out", "/tmp/pynas-bad"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert main(["search", "--resume", "/nonexistent/run"]) == 2


def test_snas_run_with_a_constraint_logs_its_cost(tmp_path):
    # α held (lr 0): the logged penalty is λ·Σ_cells Σ_(e,k) p_k·C_(e,k) at the run's own α.
    run = _run(tmp_path, "snas", 1, method="snas", constraint="aggressive", cost_estimator="analytic", a_lr=0.0)
    run.run()
    record = json.loads(open(tmp_path / "snas" / "metrics.jsonl").readline())
    probs = {t: a.detach().double().softmax(-1) for t, a in run.model.arch.alphas.items()}
    expected = 0.1 * sum((probs[t] * table.double()).sum() for t, table in run.strategy.tables)
    assert len(run.strategy.tables) == len(run.model.cells)
    assert record["cost"] == pytest.approx(float(expected), rel=1e-6)


def test_constraint_needs_snas(capsys):
    assert main(["search", "--method", "darts", "--constraint", "mild", "--out", "/tmp/pynas-bad"]) == 2
    assert "--constraint applies to --method snas" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_end_with_identical_alpha(tmp_path):
    out = tmp_path / "ddp"
    code = main(["search", "--nproc", "2", "--method", "snas", "--epochs", "2", "--C", "2", "--layers", "3",
                 "--steps", "2", "--batch-size", "64", "--out", str(out), "--quiet"])
    assert code == 0
    records = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes
    assert all(r["ranks_agree"] for r in records)
    for r in records:  # weights and every step's samples too, not only α (tests/test_distributed.py: the check fires)
        for name in ("weights", "alpha", "samples"):
            a, b = r["rank_checksums"][name]
            assert a == b and a != 0
    assert (out / "genotype.txt").read_text().startswith("Genotype(")


def _watched_model(monkeypatch, seen):
    """Records (dtype, channels-last) of the last cell's outputs of every training forward of a search."""
    from pynas.search import build

    build_model = build.build_model

    def watched(cfg, info):
        model = build_model(cfg, info)
        model.cells[-1].register_forward_hook(
            lambda m, i, out: seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)
                                           and not out.is_contiguous())) if m.training else None)
        return model

    monkeypatch.setattr(build, "build_model", watched)


def test_gpu_user_options_and_presets_run_on_cpu(tmp_path, small_digits, monkeypatch, capsys):
    preset = ["search", "--preset", "single-darts-nb201", "--dataset", "digits", "--epochs", "1", "--layers", "1",
              "--batch-size", "48", "--a-lr", "0.05", "--relaxation", "sigmoid", "--quiet"]
    argv = [*preset, "--C", "8"]
    seen = []
    _watched_model(monkeypatch, seen)
    out = tmp_path / "opts"
    assert main([*argv, "--amp", "bf16", "--channels-last", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["space"] == "nb201" and config["method"] == "single-level" and config["w_lr"] == 0.005
    assert config["epochs"] == 1 and config["relaxation"] == "sigmoid" and config["a_lr"] == 0.05
    assert "|" in (out / "genotype.txt").read_text()
    assert seen and set(seen) == {(torch.bfloat16, True)}  # every step computed in bfloat16, channels-last
    # The same search in float32 and NCHW: α moved alike (bfloat16 rounding apart).
    seen.clear()
    monkeypatch.setattr("pynas.nn.layout.MIN_CHANNELS_LAST_CHANNELS", 10 ** 9)  # NCHW: no automatic channels-last
    assert main([*argv, "--out", str(tmp_path / "fp32")]) == 0
    assert set(seen) == {(torch.float32, False)}
    # One step (48 samples, batch 48): its loss is the initial network's, and α's Adam step moves each entry by
    # ±lr in the direction of its gradient's sign.
    records = [json.loads((d / "metrics.jsonl").read_text()) for d in (out, tmp_path / "fp32")]
    assert records[0]["train_loss"] == pytest.approx(records[1]["train_loss"], rel=2e-2)
    alpha = [torch.load(d / "checkpoint.pt", weights_only=True)["model"]["arch.alphas.cell"]
             for d in (out, tmp_path / "fp32")]
    a_init = torch.full_like(alpha[1], -math.log(7))
    steps = [a - a_init for a in alpha]
    assert steps[1].abs().max() == pytest.approx(0.05, rel=1e-3)
    # The same steps but where bfloat16 rounding flips the sign of a gradient near 0.
    assert (steps[0] - steps[1]).abs().le(1e-4).float().mean() >= 0.9
    # --channels-last without --amp: float32 in channels-last; and C < 8 is refused on that path too.
    seen.clear()
    assert main([*argv, "--channels-last", "--out", str(tmp_path / "cl")]) == 0
    assert set(seen) == {(torch.float32, True)}
    capsys.readouterr()
    assert main([*preset, "--C", "4", "--channels-last", "--out", str(tmp_path / "small")]) == 2
    assert "--channels-last on CPU needs --C >= 8" in capsys.readouterr().err


def test_s1_space_from_a_darts_run(tmp_path, capsys):
    darts = _run(tmp_path, "darts", 1)
    darts.run()
    assert main(["search", "--space", "s1-from-run", "--out", str(tmp_path / "x")]) == 2
    assert "--s1-from" in capsys.readouterr().err
    s1 = _run(tmp_path, "s1", 1, space="s1-from-run", s1_from=str(tmp_path / "darts"))
    for cell in s1.model.cells:
        assert all(len(edge.materialised) <= 2 for edge in cell.edges)
    s1.run()


def test_a_run_is_handed_what_its_options_need_from_other_layers(tmp_path):
    """--max-memory and SGAS+PT use the benchmarks' and selection's parts, which a SearchRun is handed."""
    with pytest.raises(ValueError, match="--max-memory needs a batch chooser"):
        SearchRun(RunConfig(max_memory="1GB", out=str(tmp_path / "m")), quiet=True)
    with pytest.raises(ValueError, match=r"--pt \(SGAS\+PT\) needs an operation chooser"):
        SearchRun(RunConfig(method="sgas", sgas_pt=True, out=str(tmp_path / "p")), quiet=True)
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def test_off_a_terminal_a_progress_line_every_log_every_steps(tmp_path, small_digits, capsys):
    """48 training images in batches of 16: 3 steps an epoch; --log-every 2 prints step 2 of each epoch."""
    out = tmp_path / "logged"
    assert main(["search", "--epochs", "2", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "16",
                 "--log-every", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [l for l in lines if " step " in l]
    assert [l.split(" loss ")[0] for l in progress] == ["epoch 1/2 step 2/3", "epoch 2/2 step 2/3"]
    assert all(" img/s " in l and l.endswith(" left") for l in progress)
    assert sum(l.startswith("epoch ") and " train loss " in l for l in lines) == 2  # the summaries, as before
    for record in map(json.loads, open(out / "metrics.jsonl")):
        assert record["images_per_second"] * record["epoch_seconds"] == pytest.approx(48, rel=1e-9)
    assert main(["search", "--log-every", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "--log-every" in err and len(err.strip().splitlines()) == 1
