"""docs/bus.md's tables are generated from bus/subjects.py (run `make docs` after changing the table);
the docs' links resolve, the README stays a front page, and no page keeps a test count by hand."""
from __future__ import annotations

import pathlib
import re

import pytest
from testkit import load_tool

from x0tta6bl4.bus import subjects

ROOT = pathlib.Path(__file__).resolve().parents[3]
BUS_DOC = ROOT / "docs" / "bus.md"


gen_docs = load_tool("gen_docs")


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


# ---- the documentation as a whole: links that resolve, a short front page, no hand-kept counts ----
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(path: pathlib.Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_relative_link_between_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in _LINK.findall(_FENCE.sub("", doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check here
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 15_000, f"README.md has {len(readme)} characters; move detail to docs/"
    assert "make demo" in readme and "make test" in readme
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_no_doc_states_a_test_count():
    count = re.compile(r"\b\d[\d,]* (?:tests|passed|failed)\b|\btests?: \d+\b", re.I)
    found = [f"{doc.relative_to(ROOT)}: {m.group(0)!r}" for doc in DOCS
             for m in count.finditer(doc.read_text(encoding="utf-8"))]
    assert not found, f"hand-kept test counts go stale; drop them: {found}"
