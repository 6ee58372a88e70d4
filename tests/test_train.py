"""`pynas train`: the DARTS evaluation protocol on a discrete network, checkpoints and resume."""
import json
import math

import pytest
import torch
import torch.nn as nn

from pynas.cli import main
from pynas.genotype import DARTS_V2, NB201Genotype
from pynas.nn import EvalNetwork, NB201Network
from pynas.train import TrainConfig, TrainRun, count_multiply_adds, count_parameters, read_genotype, training_loss

TINY = dict(C=4, layers=3, epochs=2, batch_size=128)
TIMINGS = ("seconds", "epoch_seconds", "images_per_second")  # wall-clock: no two runs share them


def tiny_config(out, **overrides):
    return TrainConfig(out=str(out), **dict(TINY, **overrides))


def test_cifar_defaults_are_the_darts_evaluation_protocol():
    cfg = TrainConfig(dataset="cifar10").resolved(nb201=False)
    assert (cfg.C, cfg.layers, cfg.batch_size, cfg.epochs) == (36, 20, 96, 600)
    assert (cfg.lr, cfg.lr_min, cfg.momentum, cfg.weight_decay) == (0.025, 0.0, 0.9, 3e-4)
    assert (cfg.auxiliary_weight, cfg.cutout, cfg.drop_path, cfg.grad_clip) == (0.4, 16, 0.2, 5.0)
    # explicit values win over the protocol
    assert TrainConfig(dataset="cifar10", epochs=3, cutout=0).resolved(nb201=False).epochs == 3


def test_train_runs_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    full = TrainRun(tiny_config(tmp_path / "full"), quiet=True)
    result = full.run()
    # "Killed" after its first epoch: a fresh process would find only the run directory.
    half = TrainRun(tiny_config(tmp_path / "half"), quiet=True)
    half._epoch()
    del half
    resumed = TrainRun(TrainConfig(), resume=str(tmp_path / "half"), quiet=True)
    assert resumed.epoch == 1
    resumed_result = resumed.run()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_result == result
    lines = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    full_lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines, full_lines):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
    assert lines[1]["train_loss"] < lines[0]["train_loss"]  # it learns


def test_lr_is_cosine_per_epoch_and_drop_path_rises_linearly(tmp_path):
    run = TrainRun(tiny_config(tmp_path, epochs=3, drop_path=0.3, lr=0.05, lr_min=0.01), quiet=True)
    run.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for e, r in enumerate(records):
        assert r["lr"] == pytest.approx(0.01 + 0.04 * (1 + math.cos(math.pi * e / 3)) / 2)
        assert r["drop_path"] == pytest.approx(0.3 * e / 3)


def test_a_truncated_metrics_line_from_a_kill_is_dropped_on_resume(tmp_path):
    run = TrainRun(tiny_config(tmp_path, epochs=2), quiet=True)
    run._epoch()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # killed while writing epoch 2's record
    TrainRun(TrainConfig(), resume=str(tmp_path), quiet=True).run()
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_loss_adds_the_weighted_auxiliary_head():
    logits, aux, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    expected = nn.functional.cross_entropy(logits, y) + 0.4 * nn.functional.cross_entropy(aux, y)
    assert torch.allclose(training_loss((logits, aux), y, 0.4), expected)
    assert torch.allclose(training_loss((logits, None), y, 0.4), nn.functional.cross_entropy(logits, y))


def test_parameters_leave_out_the_auxiliary_head_and_match_the_published_count():
    model = EvalNetwork(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True)
    assert count_parameters(model) == 3_349_342  # DARTS (second order), CIFAR-10: 3.3 M


def test_multiply_adds_equal_a_count_over_conv_and_linear_layers():
    torch.manual_seed(0)
    model = EvalNetwork(DARTS_V2, C=8, num_classes=10, layers=5, auxiliary=True)
    counted = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            counted.append(output.numel() * k)
        elif isinstance(module, nn.Linear):
            counted.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert count_multiply_adds(model, 3, 32) == sum(counted)


def test_nb201_genotypes_train_the_nb201_network(tmp_path):
    text = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
    assert isinstance(read_genotype(text), NB201Genotype)
    run = TrainRun(TrainConfig(genotype=text, out=str(tmp_path), C=4, layers=1, epochs=1), quiet=True)
    assert isinstance(run.model, NB201Network) and run.cfg.nesterov
    assert run.run()["test_acc"] == recomputed_test_accuracy(tmp_path)


def test_train_command_writes_the_result_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--C", "4", "--layers", "3", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert set(result) >= {"params_M", "flops_M", "test_acc"}
    assert "test accuracy" in capsys.readouterr().out
    for command in (["select", "--run", str(out), "--method", "magnitude"], ["evaluate", "--run", str(out)]):
        assert main(command) == 2  # a training run's directory, where a search run's belongs
        err = capsys.readouterr().err
        assert f"--run {out} is a training run (pynas train), not a search run" in err and len(err.splitlines()) == 1
    assert main(["train", "--genotype", "NOT_A_CELL", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--genotype" in capsys.readouterr().err
    # the auxiliary head needs 20x20 inputs; digits are 8x8
    assert main(["train", "--auxiliary-weight", "0.4", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "--auxiliary-weight" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "z"), "--quiet"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2


def recomputed_test_accuracy(run_dir):
    """The test accuracy of the network in ``run_dir``'s checkpoint, counted here: one eval-mode forward of
    the whole test set (not pynas.train's batched loop)."""
    run = TrainRun(TrainConfig(), resume=str(run_dir), quiet=True)
    assert run.epoch == run.cfg.epochs  # the checkpoint of the last epoch
    x = torch.stack([run.test_data[i][0] for i in range(len(run.test_data))])
    y = torch.tensor([int(run.test_data[i][1]) for i in range(len(run.test_data))])
    run.model.eval()
    with torch.no_grad():
        logits = run.model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    return int((logits.argmax(-1) == y).sum()) / len(y)


@pytest.fixture
def small_digits(monkeypatch):
    """Training on a slice of the digits (the run's logic is tested, not its accuracy)."""
    from torch.utils.data import Subset

    from pynas import train

    load = train.load_train_test

    def small(cfg):
        train_data, test_data, info = load(cfg)
        return Subset(train_data, range(64)), Subset(test_data, range(48)), info

    monkeypatch.setattr(train, "load_train_test", small)


def test_ctrl_c_saves_exits_130_and_resume_continues_to_the_same_result(tmp_path, small_digits, monkeypatch, capsys):
    from pynas import train

    argv = ["--C", "4", "--layers", "3", "--epochs", "2", "--batch-size", "16", "--drop-path", "0.2", "--quiet"]
    assert main(["train", *argv, "--out", str(tmp_path / "full")]) == 0
    loss, calls = train.training_loss, []

    def interrupted_in_epoch_2(*a):  # 4 steps an epoch: Ctrl-C in the second step of epoch 2
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return loss(*a)

    monkeypatch.setattr(train, "training_loss", interrupted_in_epoch_2)
    out = tmp_path / "interrupted"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["train", *argv, "--out", str(out)])
    assert exit.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: the last finished epoch (1) is saved" in err and f"pynas train --resume {out}" in err
    assert not (out / "result.json").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len(calls) == 6 + 4
    full = json.loads((tmp_path / "full" / "result.json").read_text())
    assert json.loads((out / "result.json").read_text()) == full
    assert full["test_acc"] == recomputed_test_accuracy(out)
    for a, b in zip((tmp_path / "full" / "metrics.jsonl").read_text().splitlines(),
                    (out / "metrics.jsonl").read_text().splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
