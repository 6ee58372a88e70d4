"""The memory estimate of a search step (pynas.bench.memory; `pynas bench memory`, `pynas search --max-memory`)."""
import json
import re

import pytest
import torch

from pynas.bench.search import memory_in_subprocess
from pynas.cli import main
from pynas.data import DatasetInfo
from pynas.bench.memory import PARTS, MemoryEstimate, estimate
from pynas.search.budget import parse_memory
from pynas.search.config import RunConfig

# A small network, 1 thread: the probes (batch 4 and 8) and the measurement run in well under a minute.
SMALL = dict(C=8, layers=5, image_size=16)
INFO = DatasetInfo("random", 3, 10, SMALL["image_size"])


@pytest.fixture(scope="module")
def darts_estimate():
    torch.set_num_threads(1)
    cfg = RunConfig(space="darts", method="darts", dataset="cifar10", C=SMALL["C"], layers=SMALL["layers"])
    return estimate(cfg, INFO)


@pytest.mark.slow
def test_predicted_peak_of_a_cpu_run_is_its_measured_rss_growth(darts_estimate):
    # Extrapolated from batches 4 and 8 to 48, against the peak RSS growth of a fresh process running
    # the same search steps (bench_search.measure_memory, independent of pynas.bench.memory).
    torch.set_num_threads(1)
    batch = 48
    measured = memory_in_subprocess("darts", "fused", batch_size=batch, steps=2, **SMALL)["increase_mb"] * 2 ** 20
    predicted = darts_estimate.growth(batch)
    assert predicted == pytest.approx(measured, rel=0.15), (predicted / 2 ** 20, measured / 2 ** 20)
    # The parts: DARTS' weights have SGD momentum (one copy of the weights) and α Adam's two moments.
    weights = sum(p.numel() for n, p in _model().named_parameters() if not n.startswith("arch.")) * 4
    assert darts_estimate.fixed["gradients"] >= weights
    assert darts_estimate.fixed["optimiser state"] >= weights
    assert darts_estimate.per_image["activations"] > 0.3 * sum(darts_estimate.per_image.values())


def _model():
    from pynas.bench.search import build

    return build("darts", SMALL["C"], SMALL["layers"])[0]


def test_largest_batch_is_monotone_in_the_budget_and_fits():
    # Arbitrary non-round parts (MiB-scale, like a small supernet's): a measured estimate has the
    # same linear form, and the module's measured one costs ~12 s in each xdist worker using it.
    fixed = dict(zip(PARTS, (1.13e6, 0.0, 1.13e6, 2.27e6, 3.1e5, 7.7e6 / 3)))
    per_image = dict(zip(PARTS, (0.0, 3072.0, 0.0, 0.0, 2.9e6 / 7, 1.1e5 / 3)))
    est = MemoryEstimate(fixed, per_image, "cpu", (4, 8), "")
    budgets = [int(est.peak(1)) + 1] + [2 ** k for k in range(27, 34)]
    batches = [est.largest_batch(b) for b in budgets]
    assert batches == sorted(batches) and batches[0] == 1 and batches[-1] > batches[1]
    for budget, batch in zip(budgets, batches):
        assert est.peak(batch) <= budget < est.peak(batch + 1)
    with pytest.raises(ValueError, match=r"--budget .* too small for a batch of one"):
        est.largest_batch(int(est.peak(1)) - 1)
    with pytest.raises(ValueError, match="--max-memory"):
        est.largest_batch(1000, "--max-memory")


def test_the_line_through_the_probes():
    probes = [dict(growth=110, parameters=5, batches=4, gradients=5, **{"optimiser state": 10}, activations=40),
              dict(growth=190, parameters=5, batches=8, gradients=5, **{"optimiser state": 10}, activations=80)]
    for p in probes:
        p["workspace"] = p["growth"] - p["gradients"] - p["optimiser state"] - p["activations"]
    from pynas.bench.memory import _fit

    fits = {part: _fit(probes, (4, 8), part) for part in PARTS}
    est = MemoryEstimate({k: v[0] for k, v in fits.items()}, {k: v[1] for k, v in fits.items()}, "cpu", (4, 8), "")
    # growth 30 + 20/image; parameters 5, batches 1/image
    assert est.growth(10) == pytest.approx(230) and est.peak(10) == pytest.approx(245)
    assert est.largest_batch(245) == 10 and est.largest_batch(244) == 9


@pytest.mark.parametrize("text, expected", [("10GB", (10 ** 10, None)), ("512MiB", (512 * 2 ** 20, None)),
                                            ("1.5GiB", (3 * 2 ** 29, None)), ("0.8", (None, 0.8)),
                                            ("1", (None, 1.0)), (" 100 kB ", (10 ** 5, None))])
def test_sizes_parse(text, expected):
    assert parse_memory(text, "--budget") == expected


@pytest.mark.parametrize("text", ["", "GB", "10 GBs", "10XB", "-1GB", "0", "1.2", "80", "nan", "0GB", "1e9"])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(ValueError, match="--max-memory"):
        parse_memory(text, "--max-memory")


def test_a_fraction_needs_a_cuda_device():
    with pytest.raises(ValueError, match="--max-memory 0.8: a fraction of the GPU's memory needs --device cuda"):
        RunConfig(max_memory="0.8").validate()
    with pytest.raises(ValueError, match="--max-memory"):
        RunConfig(max_memory="lots").validate()


@pytest.mark.slow
def test_bench_memory_cli(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--method", "gdas", "--C", "4", "--layers", "3", "--steps", "2",
                 "--image-size", "8", "--threads", "1", "--budget", "200MiB", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["largest_batch"] >= 1 and f"largest batch within 200.00 MiB: {result['largest_batch']}" in text
    assert "every edge draws" in result["assumption"] and result["assumption"] in text  # gdas: the worst case
    assert result["config"]["method"] == "gdas" and result["probe_batches"] == [4, 8]
    for part in ("activations", "gradients", "optimiser state", "workspace"):
        assert part in text
    assert main(["bench", "memory", "--budget", "0.5", "--C", "4", "--layers", "3"]) == 2
    assert "--budget 0.5: a fraction of the GPU's memory needs --device cuda" in capsys.readouterr().err


@pytest.mark.slow
def test_search_max_memory_chooses_the_batch_and_config_repeats_it(tmp_path, capsys):
    torch.set_num_threads(1)
    tiny = ["--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--quiet"]
    out = tmp_path / "run"
    assert main(["search", *tiny, "--max-memory", "60MB", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    batch = config["batch_size"]
    assert config["max_memory"] == "60MB"
    assert f"--max-memory 60MB (57.22 MiB on cpu): batch {batch}, predicted peak " in log
    peak = float(re.search(r"predicted peak ([\d.]+) MiB", log).group(1))
    assert 56 < peak <= 57.22  # the largest batch: this tiny network takes well under 1 MiB per image
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["batch_size"] == batch
    # --config repeats the batch (not chosen again); --max-memory with --batch-size is refused.
    again = tmp_path / "again"
    assert main(["search", "--config", str(out / "config.json"), "--out", str(again), "--quiet"]) == 0
    assert "--max-memory" not in capsys.readouterr().out
    assert json.loads((again / "config.json").read_text())["batch_size"] == batch
    assert main(["search", *tiny, "--max-memory", "60MB", "--batch-size", "8", "--out", str(tmp_path / "x")]) == 2
    assert "give it or --batch-size, not both" in capsys.readouterr().err
