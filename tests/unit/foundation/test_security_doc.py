"""docs/security.md's permission table is generated from bus/permissions.py (`make docs`), and the page says
what a third-party client needs: the files `meshctl secrets init` makes, each identity's inbox prefix."""
from __future__ import annotations

import pathlib

from testkit import load_tool

from x0tta6bl4.bus import permissions

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "security.md"


gen_docs = load_tool("gen_docs")


def test_security_doc_matches_the_permission_table():
    current = DOC.read_text(encoding="utf-8")
    region = current.split(gen_docs.BEGIN, 1)[1].split(gen_docs.END, 1)[0]
    assert region.strip("\n") == permissions.describe().strip("\n"), (
        "docs/security.md differs from x0tta6bl4.bus.permissions.describe(): run `make docs` and commit it")


def test_a_stale_security_doc_is_found_and_rewritten_with_the_permission_table(tmp_path, capsys):
    stale = tmp_path / "security.md"
    stale.write_text(f"# security\n{gen_docs.BEGIN}\n| stale |\n{gen_docs.END}\nafter\n", encoding="utf-8")
    assert gen_docs.main(["--check", "--file", str(stale)]) == 1
    assert "differs from x0tta6bl4.bus.permissions.describe()" in capsys.readouterr().err
    assert "| stale |" in stale.read_text(encoding="utf-8")
    assert gen_docs.main(["--file", str(stale)]) == 0
    text = stale.read_text(encoding="utf-8")
    assert permissions.describe().splitlines()[2] in text and text.endswith("after\n")
    assert gen_docs.main(["--check", "--file", str(stale)]) == 0


def test_the_doc_names_every_identity_and_what_a_client_connects_with():
    text = DOC.read_text(encoding="utf-8")
    for p in permissions.table({"h1": ["n0"]}).identities:
        if p.kind != "mesh-host":
            assert f"`{p.identity}`" in text or f"| {p.identity} |" in text, p.identity
    for needle in ("ca/ca.pem", "creds/audit-reader.nk", permissions.inbox_prefix(permissions.AUDIT_READER),
                   "meshctl secrets init", "deny_purge", "Break glass"):
        assert needle in text, needle
