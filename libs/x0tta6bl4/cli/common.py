"""Shared bits of meshctl: finding the broker, running coroutines, printing errors."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DEFAULT_DATA_DIR = pathlib.Path(os.environ.get("X0TTA6BL4_DATA_DIR", "var"))


def stack_file(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "stack.json"


def nats_url(explicit: str | None, data_dir: pathlib.Path = DEFAULT_DATA_DIR) -> str:
    if explicit:
        return explicit
    if os.environ.get("X0TTA6BL4_NATS_URL"):
        return os.environ["X0TTA6BL4_NATS_URL"]
    f = stack_file(data_dir)
    if f.exists():
        try:
            return json.loads(f.read_text())["nats_url"]
        except (ValueError, KeyError):
            pass
    return "nats://127.0.0.1:4222"


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    except (typer.Exit, SystemExit):
        raise
    except (ConnectionRefusedError, OSError) as e:
        fail(f"cannot reach NATS: {e}")
    except Exception as e:  # noqa: BLE001 - a CLI prints one clear line, not a traceback
        if os.environ.get("X0TTA6BL4_DEBUG"):
            raise
        name = type(e).__name__
        if "NoServers" in name or "Timeout" in name and "nats" in type(e).__module__:
            fail(f"cannot reach NATS ({name}); is the stack up? (make up)")
        fail(f"{name}: {e}")
    raise AssertionError("unreachable")


async def _quiet(_e: Exception) -> None:
    """nats-py prints a traceback for every failed attempt by default; the CLI reports once instead."""


async def connect(url: str):
    import nats
    try:
        return await nats.connect(url, connect_timeout=2, max_reconnect_attempts=2, reconnect_time_wait=0.2,
                                  allow_reconnect=False, name="meshctl", error_cb=_quiet)
    except Exception as e:  # noqa: BLE001
        fail(f"cannot reach NATS at {url}: {e or type(e).__name__}; is the stack up? (make up)")
        raise
