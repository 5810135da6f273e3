"""docs/bus.md's tables are generated from bus/subjects.py (run `make docs` after changing the table)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from x0tta6bl4.bus import subjects

ROOT = pathlib.Path(__file__).resolve().parents[3]
BUS_DOC = ROOT / "docs" / "bus.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _generator()


def test_bus_doc_matches_the_subject_table():
    current = BUS_DOC.read_text(encoding="utf-8")
    assert current == gen_docs.render(current), (
        "docs/bus.md differs from x0tta6bl4.bus.subjects.describe(): run `make docs` "
        "(python tools/gen_docs.py) and commit docs/bus.md")


def test_the_generated_region_holds_describe_verbatim():
    text = BUS_DOC.read_text(encoding="utf-8")
    region = text.split(gen_docs.BEGIN, 1)[1].split(gen_docs.END, 1)[0]
    assert region.strip("\n") == subjects.describe().strip("\n")


def test_a_hand_edit_inside_the_region_is_detected_and_undone():
    current = BUS_DOC.read_text(encoding="utf-8")
    first_stream = subjects.STREAMS[0].name
    edited = current.replace(f"| {first_stream} |", "| EDITED |", 1)
    assert edited != current
    assert gen_docs.render(edited) != edited
    assert gen_docs.render(edited) == gen_docs.render(current)


def test_text_outside_the_region_is_kept():
    doc = f"intro\n{gen_docs.BEGIN}\nold\n{gen_docs.END}\noutro\n"
    assert gen_docs.render(doc, tables="| a |\n|---|") == (
        f"intro\n{gen_docs.BEGIN}\n\n| a |\n|---|\n\n{gen_docs.END}\noutro\n")


@pytest.mark.parametrize("doc", ["no markers\n", f"{gen_docs.BEGIN}\nonly the start\n",
                                 f"{gen_docs.END}\n{gen_docs.BEGIN}\n",
                                 f"{gen_docs.BEGIN}\n{gen_docs.END}\n{gen_docs.BEGIN}\n{gen_docs.END}\n"])
def test_a_malformed_region_is_a_clear_error(doc):
    with pytest.raises(gen_docs.DocError, match=r"docs/bus\.md: "):
        gen_docs.render(doc, tables="| a |")


def test_check_mode_exits_1_on_a_stale_file_and_writes_nothing(tmp_path, capsys):
    stale = tmp_path / "bus.md"
    stale.write_text(f"# bus\n{gen_docs.BEGIN}\n| stale |\n{gen_docs.END}\n", encoding="utf-8")
    before = stale.read_text(encoding="utf-8")
    assert gen_docs.main(["--check", "--file", str(stale)]) == 1
    assert "differs from x0tta6bl4.bus.subjects.describe()" in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == before
    assert gen_docs.main(["--file", str(stale)]) == 0
    assert gen_docs.main(["--check", "--file", str(stale)]) == 0
    assert subjects.describe().splitlines()[0] in stale.read_text(encoding="utf-8")
