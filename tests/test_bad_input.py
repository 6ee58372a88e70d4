"""Bad input never gives a traceback, a silent wrong result or a lost run
(issue 17): checkpoints that know what they are, runs that are never written
over, strict parsers, finite options and losses, one error boundary in the CLI."""
import errno
import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pynas.cli import main
from pynas.errors import InputError, quoted
from pynas.genotype import DARTS_V2, GENOTYPES, Genotype, NB201Genotype
from pynas.io import atomic_write, load_checkpoint, remove_stale_temporaries, save_checkpoint
from pynas.search.config import RunConfig
from pynas.select.evaluate import parse_genotype
from pynas.train import TrainConfig, read_genotype

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY = ["--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256", "--quiet"]


def search(tmp_path, name, *extra):
    return main(["search", *TINY, "--out", str(tmp_path / name), *extra])


def one_line_error(capsys, code, expected_code=2):
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished one-epoch DARTS run and SNAS run (same space)."""
    root = tmp_path_factory.mktemp("runs")
    assert search(root, "darts") == 0
    assert search(root, "snas", "--method", "snas") == 0
    return root


def copy_run(runs, tmp_path, name="darts"):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


# -- checkpoints ------------------------------------------------------------------


def test_a_checkpoint_of_another_method_is_refused_by_resume_select_and_evaluate(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path)
    shutil.copy(runs / "snas" / "checkpoint.pt", run / "checkpoint.pt")
    metrics = (run / "metrics.jsonl").read_text()
    for argv in (["search", "--resume", str(run)], ["select", "--run", str(run), "--method", "magnitude"],
                 ["evaluate", "--run", str(run), "--genotype", "DARTS_V2"]):
        err = one_line_error(capsys, main(argv))
        assert str(run / "checkpoint.pt") in err and "method 'snas'" in err and "'darts'" in err
    assert (run / "metrics.jsonl").read_text() == metrics  # history untouched


def resave(state, path):
    """Writes a hand-changed checkpoint with a checksum that matches it (a forger's), so that
    the checks behind the checksum are what refuses it."""
    header = {k: v for k, v in state.pop("pynas_checkpoint").items() if k != "checksum"}
    save_checkpoint(path, header, state)


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "malicious", "headerless", "directory",
                                    "train-kind", "forged-shapes"])
def test_damaged_or_foreign_checkpoints_give_one_line(runs, tmp_path, capsys, damage):
    run = copy_run(runs, tmp_path)
    path = run / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "malicious":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))
        torch.save({"model": Evil()}, path)
    elif damage == "headerless":
        state = torch.load(path, weights_only=True)
        del state["pynas_checkpoint"]
        torch.save(state, path)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    elif damage == "train-kind":
        state = torch.load(path, weights_only=True)
        state["pynas_checkpoint"]["kind"] = "train"
        resave(state, path)
    elif damage == "forged-shapes":  # a header that lies about its state
        state = torch.load(path, weights_only=True)
        key = next(k for k in state["model"] if k.endswith("weight"))
        state["model"][key] = torch.zeros(1)
        resave(state, path)
    for argv in (["search", "--resume", str(run)], ["select", "--run", str(run), "--method", "magnitude"]):
        err = one_line_error(capsys, main(argv))
        assert str(path) in err
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_loader_checks_kind_space_method_and_shapes(runs):
    path = runs / "darts" / "checkpoint.pt"
    state = load_checkpoint(path, "search", {"space": "darts", "method": "darts"})
    assert state["pynas_checkpoint"]["version"]
    with pytest.raises(InputError, match="not a pt checkpoint"):
        load_checkpoint(path, "pt", {})
    with pytest.raises(InputError, match="space 'darts', but this run's space is 'nb201'"):
        load_checkpoint(path, "search", {"space": "nb201"})
    shapes = {k: v for k, v in state["pynas_checkpoint"]["shapes"].items()}
    name = next(iter(shapes))
    with pytest.raises(InputError, match=f"{name} has shape"):
        load_checkpoint(path, "search", {}, {**shapes, name: [99]})


def test_train_checkpoint_of_another_genotype_is_refused(tmp_path, capsys):
    argv = ["train", "--epochs", "1", "--C", "4", "--layers", "2", "--quiet", "--batch-size", "512"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--genotype", "DARTS_V1", "--out", str(tmp_path / "b")]) == 0
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")
    err = one_line_error(capsys, main(["train", "--resume", str(tmp_path / "a")]))
    assert "checkpoint.pt" in err and "genotype" in err
    err = one_line_error(capsys, main([*argv, "--out", str(tmp_path / "a")]))
    assert "--resume" in err and "new --out" in err


# -- run directories ----------------------------------------------------------------


def test_out_on_an_existing_run_is_refused(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    err = one_line_error(capsys, main(["search", *TINY, "--out", str(run)]))
    assert f"--resume {run}" in err and "new --out" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_or_out_naming_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file" in one_line_error(capsys, main(["search", "--resume", str(f)]))
    assert "is a file" in one_line_error(capsys, main(["search", *TINY, "--out", str(f)]))
    assert "no such directory" in one_line_error(capsys, main(["search", "--resume", str(tmp_path / "none")]))
    assert "is a file" in one_line_error(capsys, main(["train", "--resume", str(f)]))


def test_resume_of_a_run_killed_before_its_first_checkpoint_restarts_it(runs, tmp_path):
    run = copy_run(runs, tmp_path)
    (run / "checkpoint.pt").unlink()  # the kill came inside the first checkpoint write
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    genotype = (runs / "darts" / "genotype.txt").read_text()
    for name in ("genotype.txt", "genotype.json"):
        (run / name).unlink()
    assert main(["search", "--resume", str(run), "--quiet"]) == 0
    assert (run / "genotype.txt").read_text() == genotype  # the same run as an uninterrupted one
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_bad_config_json_on_resume_names_the_key(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bogus_key": 1}))
    err = one_line_error(capsys, main(["search", "--resume", str(run)]))
    assert "config.json" in err and "'bogus_key'" in err
    (run / "config.json").write_text("{not json")
    assert "is not JSON" in one_line_error(capsys, main(["search", "--resume", str(run)]))
    (run / "config.json").write_text(json.dumps({**config, "w_lr": float("nan")}))
    assert "--w-lr must be a finite number" in one_line_error(capsys, main(["search", "--resume", str(run)]))


def test_stale_temporaries_are_removed_and_atomic_writes_name_the_file(tmp_path, monkeypatch):
    (tmp_path / ".checkpoint.pt.x1.tmp").write_text("")
    (tmp_path / "tmpabc.tmp").write_text("")
    (tmp_path / "keep.txt").write_text("")
    assert len(remove_stale_temporaries(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

    def full(_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'f.json'}: No space left"):
        atomic_write(str(tmp_path / "f.json"), full)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the old checkpoint")

    def interrupted(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted)
    assert path.read_bytes() == b"the old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind
    atomic_write(str(path), lambda tmp: open(tmp, "wb").write(b"new"))
    assert path.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_a_full_disk_ends_the_search_in_one_line(tmp_path, capsys, monkeypatch):
    def full(obj, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    err = one_line_error(capsys, search(tmp_path, "full"))
    assert "No space left on device" in err and "checkpoint.pt" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_ends_in_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = one_line_error(capsys, search(ro, "run"))
        assert str(ro / "run") in err
    finally:
        ro.chmod(0o700)


# -- options and losses -----------------------------------------------------------------


@pytest.mark.parametrize("option", ["--w-lr", "--a-lr", "--w-momentum", "--tau-start", "--grad-clip"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_search_options_are_refused(option, value, capsys):
    err = one_line_error(capsys, main(["search", f"{option}={value}", "--out", "/nonexistent/x"]))
    assert option in err


@pytest.mark.parametrize("option", ["--lr", "--lr-min", "--momentum", "--weight-decay", "--drop-path",
                                    "--grad-clip", "--auxiliary-weight"])
def test_non_finite_train_options_are_refused(option, capsys, tmp_path):
    err = one_line_error(capsys, main(["train", option, "nan", "--out", str(tmp_path / "t")]))
    assert option in err


@pytest.mark.parametrize("args", [["--val-batches", "0"], ["--val-batches", "-2"], ["--tune-epochs", "-1"]])
def test_select_counts_are_refused(args, capsys, runs):
    err = one_line_error(capsys, main(["select", "--run", str(runs / "darts"), "--method", "pt", *args]))
    assert args[0] in err


@pytest.mark.parametrize("layers", ["1", "2"])
def test_search_with_fewer_than_three_cells_is_refused(layers, capsys, tmp_path):
    err = one_line_error(capsys, main(["search", "--layers", layers, "--out", str(tmp_path / "x")]))
    assert "--layers must be at least 3" in err


def test_a_non_finite_loss_stops_the_run_without_a_genotype(tmp_path, capsys):
    err = one_line_error(capsys, search(tmp_path, "nan", "--w-lr", "1e30", "--grad-clip", "0"))
    assert "non-finite" in err or "nan" in err or "inf" in err
    assert not (tmp_path / "nan" / "genotype.txt").exists()
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_run_config_validate_refuses_nan_everywhere():
    for name in ("w_lr", "a_lr", "tau_end", "constraint_weight", "epsilon_alpha"):
        with pytest.raises(ValueError, match=name.replace("_", "-")):
            RunConfig(**{name: float("nan")}).validate()


def test_train_config_refuses_nan():
    cfg = TrainConfig(lr=float("nan")).resolved(False)
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        cfg.validate()


# -- the error boundary -------------------------------------------------------------------


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    import pynas.search.run as run_module

    def bug(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(run_module, "search_data", bug)
    with pytest.raises(KeyError):
        search(tmp_path, "bug")


def test_ctrl_c_before_the_loop_gives_130_with_the_resume_hint(runs, tmp_path, monkeypatch, capsys):
    import pynas.search.run as run_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    run = copy_run(runs, tmp_path)
    monkeypatch.setattr(run_module, "search_data", interrupted)
    assert main(["search", "--resume", str(run)]) == 130
    assert f"--resume {run}" in capsys.readouterr().err


def test_a_directory_as_genotype_is_refused(tmp_path, capsys):
    err = one_line_error(capsys, main(["train", "--genotype", str(tmp_path), "--out", str(tmp_path / "t")]))
    assert "is a directory" in err and "--genotype" in err


def test_long_inputs_are_quoted_shortened(capsys, tmp_path):
    long = "Genotype(" + "x" * 5000
    err = one_line_error(capsys, main(["train", "--genotype", long, "--out", str(tmp_path / "t")]))
    assert len(err) < 600 and " ... " in err
    assert len(quoted("y" * 10_000)) < 100


# -- parsers ---------------------------------------------------------------------------------

OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3"]


@st.composite
def genotypes(draw):
    cells = {}
    for cell_type in ("normal", "reduce"):
        steps = draw(st.integers(1, 5))
        cells[cell_type] = [(draw(st.sampled_from(OPS[1:])), draw(st.integers(0, k + 1)))
                            for k in range(steps) for _ in range(2)]
        cells[cell_type + "_concat"] = sorted(draw(st.sets(st.integers(0, steps + 1), min_size=1)))
    return Genotype(cells["normal"], cells["normal_concat"], cells["reduce"], cells["reduce_concat"])


@SETTINGS
@given(genotypes())
def test_every_accepted_genotype_round_trips(g):
    assert Genotype.parse(str(g)) == g
    assert Genotype.from_json(g.to_json()) == g
    assert str(Genotype.parse(str(g))) == str(g)


@st.composite
def nb201(draw):
    return NB201Genotype(tuple(tuple((draw(st.sampled_from(["none", "skip_connect", "nor_conv_1x1",
                                                              "nor_conv_3x3", "avg_pool_3x3"])), j)
                                     for j in range(i)) for i in range(1, 4)))


@SETTINGS
@given(nb201())
def test_every_accepted_nb201_string_round_trips(g):
    assert NB201Genotype.parse(str(g)) == g and str(NB201Genotype.parse(str(g))) == str(g)


@SETTINGS
@given(st.text(max_size=80))
def test_parsers_refuse_garbage_with_a_value_error(text):
    for parse in (Genotype.parse, Genotype.from_json, NB201Genotype.parse):
        try:
            g = parse(text)
        except ValueError:
            continue
        assert parse(str(g) if parse is not Genotype.from_json else g.to_json()) == g


@pytest.mark.parametrize("bad, field", [(1.5, "`normal`[0]"), ("1", "`normal`[0]"), (True, "`normal`[0]"),
                                        (10 ** 30, "input"), (1e400, "`normal`[0]")])
def test_json_indices_must_be_integers(bad, field):
    data = json.loads(DARTS_V2.to_json())
    data["normal"][0][1] = bad
    text = json.dumps(data).replace("Infinity", "1e400")
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]").replace("`", "`")):
        Genotype.from_json(text)


def test_json_concat_and_keys_are_exact():
    data = json.loads(DARTS_V2.to_json())
    with pytest.raises(ValueError, match="normal_concat"):
        Genotype.from_json(json.dumps({**data, "normal_concat": [2, 3.0]}))
    with pytest.raises(ValueError, match="unknown keys"):
        Genotype.from_json(json.dumps({**data, "extra": 1}))
    with pytest.raises(ValueError, match="not a genotype in JSON"):
        Genotype.from_json("[1, 2]")
    with pytest.raises(ValueError):
        Genotype.from_json('{"normal": ' + "9" * 5000 + "}")


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "3 nodes"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "incomplete"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "more than one edge"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~\u0661|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "must look like op~j"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~01|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "must look like op~j"),
])
def test_nb201_strings_are_exact(text, message):
    with pytest.raises(ValueError, match=message):
        NB201Genotype.parse(text)
    with pytest.raises(InputError, match="--genotype"):
        read_genotype(text)


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[], normal=[], reduce=[], reduce_concat=[])", "given twice"),
    ("Genotype([('skip_connect', 0)], [2], [], [2], [3])", "at most 4"),
    ("Genotype(normal=[('skip_connect', True), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "integer"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=range(0, 10**12), "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "literal"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=range(0, 1000000000), "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "at most"),
    ("Genotype(" + "[" * 10_000 + "]" * 10_000 + ")", "Genotype"),
    ("Genotype(*x)", "one by one"),
])
def test_darts_form_is_exact(text, message):
    with pytest.raises(ValueError, match=message):
        Genotype.parse(text)


def test_parse_genotype_reads_names_files_and_refuses_directories(tmp_path):
    assert parse_genotype("DARTS_V2") is GENOTYPES["DARTS_V2"]
    (tmp_path / "g.txt").write_text(str(DARTS_V2) + "\n")
    assert parse_genotype(str(tmp_path / "g.txt")) == DARTS_V2
    with pytest.raises(InputError, match="is a directory"):
        parse_genotype(str(tmp_path))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not a text file"):
        parse_genotype(str(tmp_path / "bin"))


def test_pt_selection_checkpoints_know_their_method(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path)
    out = tmp_path / "sel"
    argv = ["select", "--run", str(run), "--out", str(out), "--tune-epochs", "0", "--quiet"]
    assert main([*argv, "--method", "pt-mag"]) == 0
    capsys.readouterr()
    path = out / "select_checkpoint.pt"
    err = one_line_error(capsys, main([*argv, "--method", "pt"]))
    assert str(path) in err and "'pt-mag'" in err
    path.write_bytes(os.urandom(1000))
    assert str(path) in one_line_error(capsys, main([*argv, "--method", "pt-mag"]))


def test_cutout_on_the_digits_is_refused_not_ignored(tmp_path, capsys):
    from pynas.cli import main

    assert main(["search", "--cutout", "4", "--out", str(tmp_path / "s")]) == 2
    assert "--cutout" in capsys.readouterr().err
    assert main(["train", "--cutout", "4", "--out", str(tmp_path / "t")]) == 2
    assert "--cutout" in capsys.readouterr().err
