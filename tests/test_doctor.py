"""pynas doctor: versions, build, devices, and the op self-check."""
import argparse
import json

import pytest
import torch

import pynas
from pynas import doctor


def _args(*argv):
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_version_string_names_pynas_torch_and_kernels():
    text = doctor.version_string()
    assert text.startswith(f"pynas {pynas.__version__} (torch {torch.__version__}, ")
    assert ("CUDA" in text) == pynas.cuda_kernels_available()


def test_self_check_passes_on_every_device():
    results = doctor.self_check()
    devices = {r["device"] for r in results}
    assert "cpu" in devices
    assert any(d.startswith("cuda") for d in devices) == (torch.cuda.is_available() and pynas.cuda_kernels_available())
    assert {r["op"] for r in results} == {"mixed_sum", "gumbel_softmax", "edge_cost"}
    assert all(r["ok"] for r in results), results
    assert sum(r["seconds"] for r in results) < 30  # about a second; generous for a loaded machine


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and pynas.cuda_kernels_available()),
                    reason="needs a GPU and pynas' CUDA kernels")
def test_self_check_on_the_gpu():
    results = doctor.self_check(["cuda:0"])
    assert len(results) == 3 and all(r["ok"] for r in results), results


def test_a_broken_op_is_reported_not_raised(monkeypatch):
    def broken(device, gen):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setitem(doctor.CHECKS, "edge_cost", broken)
    results = {r["op"]: r for r in doctor.self_check(["cpu"])}
    assert not results["edge_cost"]["ok"] and results["edge_cost"]["error"] == "RuntimeError: kernel exploded"
    assert results["mixed_sum"]["ok"]


def test_report(capsys):
    assert doctor.run(_args()) == 0
    out = capsys.readouterr().out
    assert f"pynas {pynas.__version__}" in out and f"torch {torch.__version__}" in out
    assert "kernels: CPU" in out and "threads: " in out and "GPU" in out
    assert out.count(" ok ") == 3 * (1 + (torch.cuda.device_count() if pynas.cuda_kernels_available() else 0))


def test_json(capsys):
    assert doctor.run(_args("--json", "--no-check")) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["torch"] == torch.__version__ and env["cuda_kernels"] == pynas.cuda_kernels_available()
    assert env["threads"] == torch.get_num_threads() and env["self_check"] == []


def test_cuda_architectures_from_the_gencode_flags():
    flags = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=compute_90",
             "-gencode=arch=compute_90,code=sm_90"]
    assert doctor._archs(flags) == "sm_80, PTX compute_90, sm_90"


def test_version_and_doctor_through_the_command_line(capsys):
    from pynas.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("pynas ")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "self-check" in out and "mixed_sum" in out and "FAIL" not in out
