"""Where the running stack is and who a client is on it: the NATS URL, the client's NATS credentials and
the gRPC addresses, for every client (meshctl, the MCP server, the skill's scripts, edge sync).

Order: an explicit value, then the environment (``X0TTA6BL4_NATS_URL``, ``X0TTA6BL4_NATS_NKEY_FILE`` /
``_CA_FILE`` / ``_IDENTITY``, ``X0TTA6BL4_SECRETS_DIR``, ``X0TTA6BL4_GOV_ADDR``, ``X0TTA6BL4_KEYVAULT_ADDR``),
then ``<data dir>/stack.json`` written by ``meshctl up``, then the defaults (``<data dir>/secrets``, the
ports ``meshctl up`` uses for the first replica).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x0tta6bl4.bus.connection import NatsCredentials

DEFAULT_NATS = "nats://127.0.0.1:4222"
GRPC = {"governance": ("X0TTA6BL4_GOV_ADDR", "127.0.0.1:50051"),
        "keyvault": ("X0TTA6BL4_KEYVAULT_ADDR", "127.0.0.1:50052")}


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("X0TTA6BL4_DATA_DIR", "var"))


def stack_file(directory: pathlib.Path | None = None) -> pathlib.Path:
    return (directory or data_dir()) / "stack.json"


def nats_file(directory: pathlib.Path | None = None) -> pathlib.Path:
    """Written by every embedded stack while its nats-server runs: URL, secured or not, secrets directory and
    the server's pid, port and configuration file (to reload it when a mesh host is added)."""
    return (directory or data_dir()) / "nats.json"


def _read(path: pathlib.Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def stack_info(directory: pathlib.Path | None = None) -> dict[str, Any]:
    """What ``meshctl up`` recorded in stack.json, over what the stack's nats-server recorded in nats.json."""
    return {**_read(nats_file(directory)), **_read(stack_file(directory))}


def nats_url(explicit: str | None = None, directory: pathlib.Path | None = None) -> str:
    return explicit or os.environ.get("X0TTA6BL4_NATS_URL") or stack_info(directory).get("nats_url") or DEFAULT_NATS


def secrets_dir(directory: pathlib.Path | None = None) -> pathlib.Path:
    """The deployment's secrets directory (``meshctl secrets init``)."""
    env = os.environ.get("X0TTA6BL4_SECRETS_DIR")
    if env:
        return pathlib.Path(env)
    recorded = stack_info(directory).get("secrets_dir")
    return pathlib.Path(recorded) if recorded else (directory or data_dir()) / "secrets"


def credentials(identity: str = "operator", directory: pathlib.Path | None = None) -> NatsCredentials | None:
    """A client's NATS credentials: the environment's (``X0TTA6BL4_NATS_NKEY_FILE``, ``_CA_FILE``,
    ``_IDENTITY``) first, else ``identity``'s nkey in the secrets directory (``creds/<identity>.nk`` with
    ``ca/ca.pem``); None when there are none (an open bus). Raises CredentialsError for a named file that
    cannot be read."""
    from x0tta6bl4.bus.connection import NatsCredentials
    return NatsCredentials.from_env() or NatsCredentials.in_secrets(secrets_dir(directory), identity)


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
