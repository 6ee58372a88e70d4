"""CUDA above the ops: a search step of every method equal to the eager path in
float64 on the GPU, and a small search, DARTS-PT decision and training epoch with
``--device cuda`` (skipped without a GPU and pynas' CUDA kernels)."""
import json
import math

import pytest
import torch

from pynas.bench.search import METHODS, check_paths
from pynas.cli import main
from pynas.search.build import load_run
from pynas.train import TrainConfig, TrainRun

from conftest import CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")]


@pytest.mark.parametrize("method", METHODS)
def test_fused_search_step_equals_eager_on_cuda(method):
    # Loss, every weight and α gradient and the BatchNorm statistics, float64, same Gumbel noise.
    diffs = check_paths(method, device="cuda")
    assert max(diffs.values()) < 1e-9


def test_search_select_and_train_run_on_cuda(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--epochs", "1", "--C", "4", "--layers", "3", "--steps", "2", "--device", "cuda", "--quiet"]
    assert main(["search", *argv, "--out", str(run)]) == 0
    _, model, _, _ = load_run(str(run))
    assert all(torch.isfinite(a).all() for a in model.arch_parameters())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(m["loss"]) for m in metrics)
    # One DARTS-PT decision round on the GPU: every edge of both cell types decided.
    assert main(["select", "--run", str(run), "--method", "pt", "--tune-epochs", "0", "--val-batches", "1",
                 "--quiet"]) == 0
    assert (run / "select-pt" / "genotype.txt").read_text().startswith("Genotype(")
    out = tmp_path / "train"
    assert main(["train", "--C", "4", "--layers", "3", "--epochs", "1", "--device", "cuda", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    # Recounted on the CPU from the checkpoint's weights: the same up to an image whose two
    # largest logits the devices round apart.
    trained = TrainRun(TrainConfig(), resume=str(out), quiet=True)
    x = torch.stack([trained.test_data[i][0] for i in range(len(trained.test_data))])
    y = torch.tensor([int(trained.test_data[i][1]) for i in range(len(trained.test_data))])
    model = trained.model.cpu().eval()
    with torch.no_grad():
        logits = model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert abs(result["test_acc"] - float((logits.argmax(-1) == y).double().mean())) <= 1.0 / len(y)
