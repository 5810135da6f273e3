"""A tiny HTTP server for /health (liveness), /ready (readiness) and /metrics (Prometheus)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class _Checked(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def started_at(self) -> float: ...


class HealthServer:
    def __init__(self, target: _Checked, port: int, host: str = "0.0.0.0"):
        self.target = target
        self.port = port
        self.host = host
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            status, ctype, body = self.route(path)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def route(self, path: str) -> tuple[str, str, bytes]:
        t = self.target
        info: dict[str, Any] = {"service": t.name, "uptime_s": round(time.time() - t.started_at, 1)}
        if path == "/health":
            return "200 OK", "application/json", json.dumps({**info, "status": "ok"}).encode()
        if path == "/ready":
            ok = t.ready
            checks = getattr(t, "readiness", None)   # optional: named checks with details (Service)
            if callable(checks):
                info["checks"] = results = checks()
                # what keeps it from being ready, one reason per failing check
                info["failing"] = {name: c.get("reason") or c.get("error") or "not ok"
                                   for name, c in results.items() if not c.get("ok")}
                ok = ok and not info["failing"]
            return ("200 OK" if ok else "503 Service Unavailable", "application/json",
                    json.dumps({**info, "ready": ok}, default=str).encode())
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        return "404 Not Found", "text/plain", b"not found\n"
