"""meshctl monitor: ask the running monitor which collector it runs and which signals it has."""
from __future__ import annotations

import json
import pathlib

import typer
from rich.table import Table

from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, connect, console, fail, nats_url, run
from x0tta6bl4.monitoring.collectors import SIGNAL_DESCRIPTIONS
from x0tta6bl4.monitoring.feed import INFO_SUBJECT

monitor_app = typer.Typer(help="The monitor service: kernel collector (eBPF or /proc) and its signals.",
                          no_args_is_help=True)


async def query_info(url: str, timeout: float) -> dict:
    import nats.errors

    nc = await connect(url)
    try:
        try:
            reply = await nc.request(INFO_SUBJECT, b"", timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            fail(f"no monitor answered on {INFO_SUBJECT} at {url}: is the stack up? (make up)")
        return json.loads(reply.data)
    finally:
        await nc.close()


@monitor_app.command("info")
def info(nats: str | None = typer.Option(None, "--nats", help="NATS URL (default: the running stack's)"),
         data_dir: pathlib.Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory"),
         as_json: bool = typer.Option(False, "--json", help="print the monitor's answer as JSON"),
         timeout: float = typer.Option(2.0, "--timeout", min=0.1)) -> None:
    """Which collector the monitor runs (ebpf / proc), which signals it has and which are missing."""
    d = run(query_info(nats_url(nats, data_dir), timeout))
    if as_json:
        console.print_json(json.dumps(d))
        return
    console.print(f"monitor [bold]{d.get('instance', '?')}[/]: collector [bold]{d['collector']}[/] "
                  f"({d['state']}), every {d['interval_s']:g} s")
    if d.get("reason"):
        console.print(f"reason: {d['reason']}")
    if d.get("partitions"):
        console.print(f"telemetry partition {d['partition']} of {d['partitions']}: judges {d.get('nodes_judged', '?')} "
                      f"of {d.get('nodes', '?')} nodes known")
    table = Table("signal", "available", "what")
    for name, what in SIGNAL_DESCRIPTIONS.items():
        ok = name in d["signals"]
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", what)
    console.print(table)
    hosts = d.get("hosts") or {}
    console.print("monitored mesh host processes: " + (
        "; ".join(f"pid {p}: {', '.join(n)}" for p, n in hosts.items()) or "none yet"))
