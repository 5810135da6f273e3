"""Regenerate Python code from proto/ into libs/ (package x0tta6bl4.v1).

Usage: python tools/gen_proto.py [--out DIR]
The generated modules are committed; tests/unit/test_proto_fresh.py fails when
they are stale.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(PROTO.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(f) for f in files],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "libs"))
    a = p.parse_args()
    files = generate(pathlib.Path(a.out))
    print(f"generated {len(files)} proto files into {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
