"""The web dashboard's server: one small asyncio HTTP server (no framework) and its NATS feeds.

    GET  /                 the page (plain HTML, JS, SVG; nothing from a CDN)
    GET  /static/<file>    app.js, style.css
    GET  /api/state        every section as JSON (what the page draws)
    GET  /events           server-sent events: one ``event: <section>`` per changed section (at most 4 a second)
    POST /api/cycle        run a MAPE-K cycle now (monitor.rpc.Cycle); refused without the operator's token
    GET  /health, /ready   liveness; ready once the feeds have read the bus

It reads the bus as the ``dashboard`` identity (bus/permissions.py): the telemetry and avoided buckets, the
MAPEK and AUDIT streams from ``history_s`` ago, and ``gov.watch.*``; the only thing it may publish is the
request for a cycle. Writes over HTTP need ``Authorization: Bearer <token>`` (the token file of the
deployment's secrets, ``<secrets>/dashboard/token``); without it they answer 401 and do nothing.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import json
import logging
import pathlib
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from x0tta6bl4.dashboard.state import SECTIONS, DashboardState

log = logging.getLogger("x0tta6bl4.dashboard")

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
SECURITY_HEADERS = ("Content-Security-Policy: default-src 'self'; img-src 'self' data:; style-src 'self'; "
                    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'\r\n"
                    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
                    "Cache-Control: no-store\r\n")
MAX_BODY = 4096
PUSH_INTERVAL_S = 0.25


def static_file(name: str) -> bytes:
    return resources.files("x0tta6bl4.dashboard").joinpath("static", name).read_bytes()


def ensure_token(path: pathlib.Path) -> str:
    """The operator's dashboard token: read from ``path``, made (0600, 32 random bytes) when missing."""
    path = pathlib.Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(32) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"dashboard token file {path}: the token is shorter than 16 characters")
    return token


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body


class DashboardServer:
    """HTTP + SSE over a :class:`DashboardState`. ``request_cycle``: what POST /api/cycle does (given the
    parsed JSON body) once the token is checked."""

    def __init__(self, state: DashboardState, token: str, port: int = 0, host: str = "127.0.0.1",
                 request_cycle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, allowed_hosts: tuple[str, ...] = ()):
        self.state, self.token, self.host, self.port = state, token, host, port
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        self.request_cycle = request_cycle
        self.clock_ns = clock_ns
        self.ready = False
        self.started_at = time.time()
        self.dirty: set[str] = set()
        self.clients: set[asyncio.Queue[bytes | None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._pusher: asyncio.Task | None = None

    # ---- life -----------------------------------------------------------------------------------------
    async def start(self) -> DashboardServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._pusher = asyncio.create_task(self._push_loop())
        return self

    async def stop(self) -> None:
        if self._pusher:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for q in list(self.clients):
            q.put_nowait(None)
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def changed(self, sections: set[str]) -> None:
        self.dirty |= sections

    # ---- pushing --------------------------------------------------------------------------------------
    def _event(self, section: str) -> bytes:
        data = json.dumps(self.state.section(section, self.clock_ns()), separators=(",", ":"))
        return f"event: {section}\ndata: {data}\n\n".encode()

    async def _push_loop(self) -> None:
        last_mesh = 0.0
        while True:
            await asyncio.sleep(PUSH_INTERVAL_S)           # pacing: at most 4 updates a second
            if time.monotonic() - last_mesh >= 1.0:        # silence is a matter of time: re-judge every second
                self.dirty.add("mesh")
            if not self.dirty or not self.clients:
                continue
            if "mesh" in self.dirty:
                last_mesh = time.monotonic()
            frames = b"".join(self._event(s) for s in SECTIONS if s in self.dirty)
            self.dirty.clear()
            for q in list(self.clients):
                if q.qsize() > 32:                          # a client that does not read: dropped
                    self.clients.discard(q)
                    q.put_nowait(None)
                else:
                    q.put_nowait(frames)

    # ---- HTTP -----------------------------------------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        line = await asyncio.wait_for(reader.readline(), 10)
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return None
        headers: dict[str, str] = {}
        while True:
            h = await asyncio.wait_for(reader.readline(), 10)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        length = headers.get("content-length", "0")
        if length.isdigit() and 0 < int(length) <= MAX_BODY:
            body = await asyncio.wait_for(reader.readexactly(int(length)), 10)
        elif length.isdigit() and int(length) > MAX_BODY:
            body = b"\0" * (MAX_BODY + 1)               # refused below, not read
        return Request(parts[0].upper(), parts[1], headers, body)

    @staticmethod
    def _response(status: str, ctype: str, body: bytes, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"{SECURITY_HEADERS}{extra}Connection: close\r\n\r\n").encode() + body

    @staticmethod
    def _json(status: str, doc: Any, extra: str = "") -> bytes:
        return DashboardServer._response(status, "application/json", json.dumps(doc).encode() + b"\n", extra)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await self._read(reader)
            if req is None:
                writer.write(self._json("400 Bad Request", {"error": "malformed HTTP request line"}))
            elif not self.host_allowed(req):
                names = ", ".join(self.allowed_hosts) or "127.0.0.1 or localhost"
                writer.write(self._json("421 Misdirected Request", {"error": f"this dashboard answers requests "
                                                                    f"for {names} only"}))
            elif req.method == "GET" and req.path.split("?")[0] == "/events":
                await self._sse(writer)
                return
            else:
                writer.write(await self.route(req))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def host_allowed(self, req: Request) -> bool:
        """On loopback, only requests addressed to a loopback name: a web page elsewhere that re-points its own
        domain at 127.0.0.1 (DNS rebinding) cannot read the dashboard through the operator's browser. With
        ``allowed_hosts`` (a container listening on every interface, published on the host's loopback), only
        those names, wherever it listens; /health and /ready answer any name (probes address the pod's IP)."""
        if req.path.split("?")[0] in ("/health", "/ready"):
            return True
        if not self.allowed_hosts and self.host not in ("127.0.0.1", "localhost", "::1"):
            return True
        host = req.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name.lower() in (self.allowed_hosts or ("127.0.0.1", "localhost", "[::1]"))

    def authorized(self, req: Request) -> bool:
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def route(self, req: Request) -> bytes:
        path = req.path.split("?")[0]
        if req.method == "GET":
            if path in ("/", "/index.html"):
                return self._response("200 OK", STATIC["index.html"], static_file("index.html"))
            if path.startswith("/static/") and path.removeprefix("/static/") in STATIC:
                name = path.removeprefix("/static/")
                return self._response("200 OK", STATIC[name], static_file(name))
            if path == "/api/state":
                return self._json("200 OK", self.state.snapshot(self.clock_ns()))
            if path == "/health":
                return self._json("200 OK", {"service": "dashboard", "status": "ok",
                                             "uptime_s": round(time.time() - self.started_at, 1)})
            if path == "/ready":
                return self._json("200 OK" if self.ready else "503 Service Unavailable",
                                  {"service": "dashboard", "ready": self.ready})
            if path == "/api/cycle":
                return self._json("405 Method Not Allowed", {"error": "POST /api/cycle runs a cycle"},
                                  "Allow: POST\r\n")
            return self._json("404 Not Found", {"error": f"no page {path!r}"})
        if req.method == "POST" and path == "/api/cycle":
            if not self.authorized(req):
                return self._json("401 Unauthorized", {"error": "the dashboard is read-only without the operator "
                                                       "token: send Authorization: Bearer <token> (the token is "
                                                       "in <secrets>/dashboard/token)"},
                                  'WWW-Authenticate: Bearer realm="x0tta6bl4"\r\n')
            if len(req.body) > MAX_BODY:
                return self._json("413 Content Too Large", {"error": f"body over {MAX_BODY} bytes"})
            try:
                body = json.loads(req.body) if req.body.strip() else {}
                if not isinstance(body, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                return self._json("400 Bad Request", {"error": f"expected a JSON object or nothing ({e})"})
            if self.request_cycle is None:
                return self._json("503 Service Unavailable", {"error": "no bus connection"})
            try:
                answer = await self.request_cycle(body)
            except Exception as e:  # noqa: BLE001 - the monitor's absence is an answer, not a crash
                return self._json("502 Bad Gateway", {"error": f"no monitor answered on monitor.rpc.Cycle "
                                                               f"({type(e).__name__})"})
            status = "400 Bad Request" if "error" in answer else "200 OK"
            return self._json(status, answer)
        if path == "/api/cycle":
            return self._json("405 Method Not Allowed", {"error": f"{req.method} not allowed"}, "Allow: POST\r\n")
        return self._json("405 Method Not Allowed", {"error": f"{req.method} {path}: read-only page"},
                          "Allow: GET\r\n")

    async def _sse(self, writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        head = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + SECURITY_HEADERS
                + "Connection: keep-alive\r\n\r\n").encode()
        writer.write(head + b"retry: 1000\n\n" + b"".join(self._event(s) for s in SECTIONS))
        self.clients.add(q)
        try:
            await writer.drain()
            while True:
                try:
                    frames = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    frames = b": keep-alive\n\n"
                if frames is None:
                    return
                writer.write(frames)
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.clients.discard(q)
            with contextlib.suppress(Exception):
                writer.close()


# ---- the NATS feeds ---------------------------------------------------------------------------------------
async def follow_bus(nc: Any, server: DashboardServer, history_s: float) -> list[Any]:
    """Fill the state from the bus and keep it current; returns what to stop (subscriptions, watchers,
    tasks). The server is ready once the buckets' current values have been read."""
    from x0tta6bl4.bus import subjects
    from x0tta6bl4.bus.kvwatch import BucketNotFound, next_update, watch_bucket
    from x0tta6bl4.bus.reader import subscribe_since
    from x0tta6bl4.v1 import events_pb2

    js = nc.jetstream()
    state = server.state
    handles: list[Any] = []

    async def bucket(name: str, apply: Callable[[str, bytes | None], set[str]]) -> None:
        while True:
            try:
                watcher, initial = await watch_bucket(js, name, timeout=30)
                break
            except BucketNotFound:
                await asyncio.sleep(1.0)                  # the provisioner has not made it yet
        handles.append(watcher)
        for e in initial:
            server.changed(apply(e.key, None if e.operation in ("DEL", "PURGE") else e.value))
        ready_buckets.add(name)

        async def loop() -> None:
            while True:
                e = await next_update(watcher, timeout=30)
                if e is not None:
                    server.changed(apply(e.key, None if e.operation in ("DEL", "PURGE") else e.value))
        handles.append(asyncio.create_task(loop()))

    def telemetry(key: str, value: bytes | None) -> set[str]:
        if not value:
            return state.forget_node(key.removeprefix("node."))
        try:
            return state.apply_telemetry(events_pb2.NodeTelemetry.FromString(value))
        except Exception:  # noqa: BLE001 - not a NodeTelemetry: ignored
            return set()

    ready_buckets: set[str] = set()
    await bucket("telemetry", telemetry)
    await bucket("avoided", state.apply_avoided)

    since = datetime.datetime.fromtimestamp(time.time() - history_s, datetime.UTC)

    async def on_mapek(msg: Any) -> None:
        server.changed(state.apply_mapek(msg.subject, msg.data, (msg.headers or {}).get("traceparent")))

    async def on_audit(msg: Any) -> None:
        server.changed(state.apply_audit(msg.data))

    async def on_proposal(msg: Any) -> None:
        server.changed(state.apply_proposal(msg.data))

    for subject, stream, cb in ((subjects.MAPEK_ALL, subjects.STREAM_MAPEK, on_mapek),
                                (subjects.AUDIT_ALL, subjects.STREAM_AUDIT, on_audit)):
        handles.append(await subscribe_since(js, subject, stream, since, cb))
    handles.append(await nc.subscribe(subjects.GOV_WATCH_ALL, cb=on_proposal))
    server.ready = True
    return handles


async def request_cycle(nc: Any, body: dict[str, Any]) -> dict[str, Any]:
    from x0tta6bl4.bus import subjects
    req = {"trigger": str(body.get("trigger", "")), "reasons": ["requested from the dashboard"]}
    reply = await nc.request(subjects.MONITOR_CYCLE, json.dumps(req).encode(), timeout=5)
    doc = json.loads(reply.data)
    return doc if isinstance(doc, dict) else {"error": "the monitor's answer is not an object"}
