"""Installing the way users install: the sdist holds what a build needs, a wheel
built from it (against this environment's torch, without build isolation)
installs elsewhere and runs the main job; optional extras fail in one line;
TensorBoard logging."""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch

import pynas
from pynas import _optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(_optional.MissingDependency) as e:
        _optional.require("matplotlib", needed_for="plots")
    assert str(e.value) == 'pynas needs matplotlib for plots: pip install "pynas[plots]"'
    assert isinstance(e.value, ImportError) and isinstance(e.value, RuntimeError)  # the CLIs print RuntimeErrors


def test_every_optional_import_names_a_declared_extra():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    for extra in set(_optional.EXTRAS.values()):
        assert f"\n{extra} = [" in text, extra


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    from pynas.analysis import draw

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pynas\[plots\]'):
        draw.pyplot()


def test_build_info_records_the_torch_built_against():
    info = pytest.importorskip("pynas._build_info").BUILD_INFO
    assert info["torch_version"] == torch.__version__
    assert info["cuda_kernels"] == pynas.cuda_kernels_available()


def test_setup_forces_no_cxx_standard():
    # torch's helpers pick the standard its headers need (C++20 for recent releases);
    # a hard-coded older one breaks builds against newer torch.
    assert "-std=" not in open(os.path.join(ROOT, "setup.py")).read()


# -- TensorBoard -------------------------------------------------------------

SEARCH_RECORD = {"epoch": 2, "train_loss": 1.5, "train_acc": 0.4, "val_loss": 1.7, "val_acc": 0.35,
                 "temperature": 0.8, "cost": None, "decisions": None, "grad_correlation": None,
                 "genotype": "Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[])",
                 "arch": {"normal": {"probabilities": [[0.25, 0.75], [0.5, 0.5]], "entropy": [0.56, 0.69]}},
                 "ranks_agree": True}


def test_tensorboard_scalars_of_a_search_record():
    from pynas.tensorboard import scalars

    tags = dict(scalars(SEARCH_RECORD, op_names=["skip_connect", "sep_conv_3x3"]))
    assert tags == {"loss/train": 1.5, "accuracy/train": 0.4, "loss/val": 1.7, "accuracy/val": 0.35,
                    "temperature": 0.8, "ranks_agree": 1.0,
                    "alpha/normal/edge_0/skip_connect": 0.25, "alpha/normal/edge_0/sep_conv_3x3": 0.75,
                    "alpha/normal/edge_1/skip_connect": 0.5, "alpha/normal/edge_1/sep_conv_3x3": 0.5,
                    "entropy/normal/edge_0": 0.56, "entropy/normal/edge_1": 0.69}
    nested = dict(scalars({"epoch": 1, "cost": 0.1, "grad_correlation": {"normal": {"edge": [0.5, 0.25]}}}))
    assert nested == {"cost": 0.1, "grad_correlation/normal/edge/0": 0.5, "grad_correlation/normal/edge/1": 0.25}


def _read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logger_writes_the_records(tmp_path):
    pytest.importorskip("tensorboard")
    from pynas.tensorboard import TensorBoardLogger

    with TensorBoardLogger(str(tmp_path)) as tb:
        tb.log(SEARCH_RECORD)
        tb.log({**SEARCH_RECORD, "epoch": 3, "val_acc": 0.5})
    written = _read_scalars(str(tmp_path))
    assert written["accuracy/val"] == [(2, pytest.approx(0.35)), (3, pytest.approx(0.5))]
    assert written["alpha/normal/edge_0/op_1"][0] == (2, pytest.approx(0.75))


def test_train_writes_tensorboard_beside_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from pynas.train import TrainConfig, TrainRun

    cfg = TrainConfig(genotype="DARTS_V2", C=4, layers=2, epochs=2, batch_size=256, out=str(tmp_path / "run"),
                      tensorboard=str(tmp_path / "tb"))
    TrainRun(cfg, quiet=True).run()
    written = _read_scalars(str(tmp_path / "tb"))
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [step for step, _ in written["accuracy/test"]] == [1, 2]
    assert [v for _, v in written["loss/train"]] == pytest.approx([m["train_loss"] for m in metrics])
    assert "lr" in written and "drop_path" in written


def test_train_without_tensorboard_stops_before_training(tmp_path, monkeypatch):
    from pynas.train import TrainConfig, TrainRun

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = TrainConfig(genotype="DARTS_V2", C=4, layers=2, epochs=1, out=str(tmp_path / "run"),
                      tensorboard=str(tmp_path / "tb"))
    with pytest.raises(RuntimeError, match=r'pynas\[tensorboard\]'):
        TrainRun(cfg, quiet=True)
    assert not (tmp_path / "run").exists()


# -- the sdist ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    name = _run([sys.executable, "-c", code], cwd=ROOT).stdout.split()[-1]
    return out / name


def test_sdist_holds_what_a_build_needs(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "csrc")) for f in fs}
    assert csrc and csrc <= names, sorted(csrc - names)
    assert {"setup.py", "pyproject.toml", "README.md", "pynas/_data/digits.npz", "pynas/__init__.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o")) or n == "pynas/_build_info.py"]


@pytest.mark.slow(seconds=150)
def test_wheel_from_sdist_installs_and_runs(sdist, tmp_path):
    # The CI route of a user's `pip install pynas` from the sdist, with this
    # environment's torch and without isolation; CPU kernels only, to keep it short.
    env = {**os.environ, "PYNAS_FORCE_CPU": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "wheels"),
          str(sdist)], env=env)
    wheel, = (tmp_path / "wheels").glob("pynas-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)])
    site = tmp_path / "site"
    assert (site / "pynas" / "_data" / "digits.npz").exists() and (site / "pynas" / "_build_info.py").exists()
    requires = (next(site.glob("pynas-*.dist-info")) / "METADATA").read_text()
    assert f"Requires-Dist: torch=={torch.__version__.split('+')[0]}\n" in requires
    # Run from an empty folder so that only the installed copy can be imported.
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    check = ("import pynas, pynas.doctor as d; assert pynas.__file__.startswith(%r), pynas.__file__; "
             "r = d.self_check(['cpu']); assert all(c['ok'] for c in r), r") % str(site)
    _run([sys.executable, "-c", check], cwd=tmp_path, env=env)
    run = tmp_path / "run"
    _run([sys.executable, "-m", "pynas", "search", "--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2",
          "--batch-size", "32", "--out", str(run), "--quiet"], cwd=tmp_path, env=env)
    assert (run / "genotype.txt").read_text().startswith("Genotype(")


def test_search_writes_tensorboard_beside_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from pynas.cli import main

    assert main(["search", "--epochs", "2", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256",
                 "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"), "--quiet"]) == 0
    written = _read_scalars(str(tmp_path / "tb"))
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [v for _, v in written["accuracy/val"]] == pytest.approx([m["val_acc"] for m in metrics])
    p = metrics[-1]["arch"]["normal"]["probabilities"][0][4]
    assert written["alpha/normal/edge_0/sep_conv_3x3"][-1] == (2, pytest.approx(p))
