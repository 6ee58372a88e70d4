"""Every preset value against docs/presets.md, where each number cites its source."""
import ast
import os
import re

import pytest

from pynas.search.presets import PRESETS
from pynas.search.config import RunConfig

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "presets.md")


def _value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string option


def documented():
    """{section: (inherited section or None, {option: value})} as the document writes them."""
    sections, name = {}, None
    for line in open(DOC):
        line = line.rstrip("\n")
        if line.startswith("## "):
            name = line[3:].strip()
            sections[name] = [None, {}]
        elif name and line.startswith("Inherits: "):
            sections[name][0] = line[len("Inherits: "):].strip()
        elif name and line.startswith("| ") and not line.startswith("| option") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == 3 and cells[2], f"{name}: every value cites its source: {line}"
            option, value = cells[0], _value(cells[1])
            assert option not in sections[name][1], f"{name}: {option} twice"
            sections[name][1][option] = value
    return sections


def resolve(sections, name):
    parent, own = sections[name]
    values = dict(resolve(sections, parent)) if parent else {}
    values.update(own)
    return values


def test_the_document_lists_every_preset_and_nothing_else():
    sections = documented()
    presets = {n for n in sections if not n.startswith("base: ")}
    assert presets == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_values_are_the_documented_ones(name):
    want = resolve(documented(), name)
    got = {k: tuple(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
    assert got == want
    RunConfig(**PRESETS[name]).validate()  # a usable configuration
    assert set(PRESETS[name]) <= set(RunConfig.__dataclass_fields__)


def test_presets_carry_the_numbers_the_papers_state():
    # A few anchors typed from the papers (not from the document): SNAS 150 epochs single level (003 Sec. 3.2),
    # Single-DARTS' NB201 SGD lr 0.005 and sigmoid at −ln 7 (002 App. B, Sec. 5.1.2), SGAS' decisions.
    assert PRESETS["snas-cifar10"]["epochs"] == 150 and PRESETS["snas-cifar10"]["train_fraction"] == 1.0
    nb201 = PRESETS["single-darts-nb201"]
    assert nb201["w_lr"] == 0.005 and float(nb201["a_init"]) == pytest.approx(-1.9459101490553132)
    assert nb201["space"] == "nb201" and nb201["layers"] // 3 == 5
    darts_pt = {name for name in PRESETS if re.fullmatch(r"darts-pt-s[1-4](-fixed-alpha)?", name)}
    assert len(darts_pt) == 8 and all(PRESETS[n]["space"] == n.split("-")[2] for n in darts_pt)  # 001 App. A.2
    assert PRESETS["sgas-cifar10"]["first_decision"] + 7 * PRESETS["sgas-cifar10"]["decision_freq"] == 45
