"""The generated protobuf code in libs/ must match proto/ (run `make proto` after editing a .proto)."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "the generator produced nothing"
    stale = [str(p) for p in generated
             if not (ROOT / "libs" / p).exists() or (ROOT / "libs" / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
