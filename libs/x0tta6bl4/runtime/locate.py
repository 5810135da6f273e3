"""Where the running stack is: the NATS URL and the gRPC addresses, for every client
(meshctl, the MCP server, the skill's scripts).

Order: an explicit value, then the environment (``X0TTA6BL4_NATS_URL``, ``X0TTA6BL4_GOV_ADDR``,
``X0TTA6BL4_KEYVAULT_ADDR``), then ``<data dir>/stack.json`` written by ``meshctl up``, then the
defaults (the ports ``meshctl up`` uses for the first replica).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

DEFAULT_NATS = "nats://127.0.0.1:4222"
GRPC = {"governance": ("X0TTA6BL4_GOV_ADDR", "127.0.0.1:50051"),
        "keyvault": ("X0TTA6BL4_KEYVAULT_ADDR", "127.0.0.1:50052")}


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("X0TTA6BL4_DATA_DIR", "var"))


def stack_file(directory: pathlib.Path | None = None) -> pathlib.Path:
    return (directory or data_dir()) / "stack.json"


def stack_info(directory: pathlib.Path | None = None) -> dict[str, Any]:
    try:
        info = json.loads(stack_file(directory).read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def nats_url(explicit: str | None = None, directory: pathlib.Path | None = None) -> str:
    return explicit or os.environ.get("X0TTA6BL4_NATS_URL") or stack_info(directory).get("nats_url") or DEFAULT_NATS


def grpc_addr(service: str, explicit: str | None = None, directory: pathlib.Path | None = None) -> str:
    env, default = GRPC[service]
    return (explicit or os.environ.get(env) or stack_info(directory).get("grpc", {}).get(service) or default)


ADMIN_TOKEN_FILE = "governance-admin.token"


def admin_token(explicit: str | None = None, directory: pathlib.Path | None = None) -> str:
    """The governance ledger admin token (RegisterVoter): an explicit value, ``X0TTA6BL4_GOV_ADMIN_TOKEN``,
    the file named by ``X0TTA6BL4_ADMIN_TOKEN_FILE``, or ``<data dir>/governance-admin.token`` (written
    by the governance service of a local stack). "" when none is found."""
    if explicit:
        return explicit
    if os.environ.get("X0TTA6BL4_GOV_ADMIN_TOKEN"):
        return os.environ["X0TTA6BL4_GOV_ADMIN_TOKEN"]
    path = pathlib.Path(os.environ.get("X0TTA6BL4_ADMIN_TOKEN_FILE") or (directory or data_dir()) / ADMIN_TOKEN_FILE)
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def admin_metadata(explicit: str | None = None, directory: pathlib.Path | None = None) -> tuple:
    """gRPC metadata carrying the admin token (empty when there is none)."""
    token = admin_token(explicit, directory)
    return (("authorization", f"Bearer {token}"),) if token else ()
