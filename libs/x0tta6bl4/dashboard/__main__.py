"""``python -m x0tta6bl4.dashboard``: the web dashboard as a process of the stack.

Settings (X0TTA6BL4_*): NATS_URL and the NATS credentials of the ``dashboard`` identity (NATS_NKEY_FILE,
NATS_CA_FILE), DASHBOARD_HOST (127.0.0.1), DASHBOARD_PORT (8088; 0 = any free port), DASHBOARD_TOKEN_FILE
(the operator's token; made when missing), DASHBOARD_HISTORY_S (how far back cycles and audit events are
read at start), DASHBOARD_ALLOWED_HOSTS (the names requests may address, comma-separated; default: the
loopback names when it listens on loopback - a container listening on 0.0.0.0 behind a port published on
127.0.0.1 sets ``127.0.0.1,localhost``). It prints one JSON line ``{"ready": true, "url": ...}`` once it serves.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import signal
import sys

from pydantic import Field

from x0tta6bl4.config import CommonSettings, ConfigError, load_settings


class DashboardSettings(CommonSettings):
    dashboard_host: str = Field("127.0.0.1", description="address the dashboard listens on")
    dashboard_port: int = Field(8088, ge=0, le=65535, description="its HTTP port (0 = any free port)")
    dashboard_token_file: pathlib.Path = Field(pathlib.Path("var/secrets/dashboard/token"),
                                               description="the operator's token for write actions")
    dashboard_history_s: float = Field(900.0, ge=0, le=7 * 86400,
                                       description="cycles and audit events read back at start (seconds)")
    dashboard_allowed_hosts: str = Field("", description="Host names requests may address, comma-separated "
                                         "(empty: loopback names when listening on loopback, else any)")


async def serve(settings: DashboardSettings) -> None:
    from x0tta6bl4.bus.connection import connect
    from x0tta6bl4.dashboard.server import DashboardServer, ensure_token, follow_bus, request_cycle
    from x0tta6bl4.dashboard.state import DashboardState
    try:
        token = ensure_token(settings.dashboard_token_file)
    except (OSError, ValueError) as e:
        raise ConfigError(f"X0TTA6BL4_DASHBOARD_TOKEN_FILE={str(settings.dashboard_token_file)!r}: {e}") from None
    nc = await connect(settings.nats_url, "dashboard")
    server = DashboardServer(DashboardState(), token, settings.dashboard_port, settings.dashboard_host,
                             request_cycle=lambda body: request_cycle(nc, body),
                             allowed_hosts=tuple(settings.dashboard_allowed_hosts.split(",")))
    try:
        await server.start()
    except OSError as e:
        await nc.close()
        raise ConfigError(f"X0TTA6BL4_DASHBOARD_PORT={settings.dashboard_port}: cannot listen on "
                          f"{settings.dashboard_host}:{settings.dashboard_port} ({e.strerror or e})") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handles = await follow_bus(nc, server, settings.dashboard_history_s)
    print(json.dumps({"ready": True, "url": server.url, "port": server.port}), flush=True)
    await stop.wait()
    for h in handles:
        with contextlib.suppress(Exception):
            if isinstance(h, asyncio.Task):
                h.cancel()
            elif hasattr(h, "unsubscribe"):
                await h.unsubscribe()
            else:
                await h.stop()
    await server.stop()
    with contextlib.suppress(Exception):
        await nc.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s dashboard %(levelname)s %(message)s")
    try:
        settings = load_settings(DashboardSettings)
        asyncio.run(serve(settings))
    except ConfigError as e:
        print(f"dashboard: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
