"""Shared bits of meshctl: finding the broker and meshctl's credentials on it, running coroutines, printing
errors. meshctl speaks as the ``operator`` identity (:mod:`x0tta6bl4.bus.permissions`): its nkey and the CA
come from ``X0TTA6BL4_NATS_NKEY_FILE`` / ``X0TTA6BL4_NATS_CA_FILE``, else from the stack's secrets directory
(``<data dir>/secrets``, see :func:`x0tta6bl4.runtime.locate.credentials`)."""
from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from x0tta6bl4.bus.connection import CredentialsError, NatsCredentials, connect_once
from x0tta6bl4.bus.permissions import OPERATOR
from x0tta6bl4.runtime import locate

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DEFAULT_DATA_DIR = locate.data_dir()


def stack_file(data_dir: pathlib.Path) -> pathlib.Path:
    return locate.stack_file(data_dir)


_URL_DIRS: dict[str, pathlib.Path] = {}   # the data dir each URL was found for (its secrets are there)
_SPEAKING_AS: list[str] = []              # the bus identity of this process's connections


def nats_url(explicit: str | None, data_dir: pathlib.Path = DEFAULT_DATA_DIR) -> str:
    url = locate.nats_url(explicit, data_dir)
    _URL_DIRS[url] = data_dir
    return url


def credentials(url: str, data_dir: pathlib.Path | None = None, identity: str = OPERATOR
                ) -> NatsCredentials | None:
    """meshctl's credentials for the stack at ``url`` (one clear error when a named file is unreadable)."""
    try:
        return locate.credentials(identity, data_dir or _URL_DIRS.get(url, DEFAULT_DATA_DIR))
    except CredentialsError as e:
        fail(str(e))


_STARTED = time.monotonic()


def progress(step: str) -> None:
    """One line per step of a long command, on stderr (stdout stays the command's result): the time since
    meshctl started and what it is doing now."""
    err_console.print(f"[dim]{time.monotonic() - _STARTED:6.1f}s[/] {step}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (typer.Exit, SystemExit):
        raise
    except Exception as e:
        if os.environ.get("X0TTA6BL4_DEBUG"):
            raise
        name = type(e).__name__
        nats_error = type(e).__module__.startswith("nats")
        if isinstance(e, OSError) and not nats_error:
            fail(f"cannot reach NATS: {e}")
        if "NoServers" in name or ("Timeout" in name and nats_error):
            who = _SPEAKING_AS[-1] if _SPEAKING_AS else None
            if who and who != OPERATOR:
                fail(f"no answer from NATS ({name}): identity {who!r} may not do this (nats-server logs a "
                     "permissions violation), or the stack is down")
            fail(f"cannot reach NATS ({name}); is the stack up? (make up)")
        fail(f"{name}: {e}")
    raise AssertionError("unreachable")


async def connect(url: str, data_dir: pathlib.Path | None = None):
    """A bounded connection to the stack's NATS as the operator."""
    creds = credentials(url, data_dir)
    _SPEAKING_AS.append(creds.identity if creds is not None else "")
    try:
        return await connect_once(url, "meshctl", timeout_s=5, creds=creds)
    except Exception as e:  # noqa: BLE001 - one clear line
        why = f"{e or type(e).__name__}"
        if creds is None and ("Authorization" in why or "SSL" in why or "tls" in url):
            hint = (f"no NATS credentials: set X0TTA6BL4_NATS_NKEY_FILE and X0TTA6BL4_NATS_CA_FILE, or "
                    f"--data-dir of the stack (its secrets/creds/{OPERATOR}.nk)")
        elif creds is not None and "Authorization" in why:
            hint = f"the server refused identity {creds.identity} ({creds.nkey_file})"
        else:
            hint = "is the stack up? (make up)"
        fail(f"cannot reach NATS at {url}: {why}; {hint}")
