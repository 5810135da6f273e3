"""Shared bits of meshctl: finding the broker, running coroutines, printing errors."""
from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from x0tta6bl4.bus.connection import connect_once
from x0tta6bl4.runtime import locate

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DEFAULT_DATA_DIR = locate.data_dir()


def stack_file(data_dir: pathlib.Path) -> pathlib.Path:
    return locate.stack_file(data_dir)


def nats_url(explicit: str | None, data_dir: pathlib.Path = DEFAULT_DATA_DIR) -> str:
    return locate.nats_url(explicit, data_dir)


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
    except (ConnectionRefusedError, OSError) as e:
        fail(f"cannot reach NATS: {e}")
    except Exception as e:
        if os.environ.get("X0TTA6BL4_DEBUG"):
            raise
        name = type(e).__name__
        if "NoServers" in name or ("Timeout" in name and "nats" in type(e).__module__):
            fail(f"cannot reach NATS ({name}); is the stack up? (make up)")
        fail(f"{name}: {e}")
    raise AssertionError("unreachable")


async def connect(url: str):
    try:
        return await connect_once(url, "meshctl", timeout_s=5)
    except Exception as e:
        fail(f"cannot reach NATS at {url}: {e or type(e).__name__}; is the stack up? (make up)")
        raise
