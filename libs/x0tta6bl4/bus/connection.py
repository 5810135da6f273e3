"""Connecting to NATS and declaring the streams, buckets and consumers of subjects.py."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import inbox_prefix
from x0tta6bl4.config_errors import ConfigError

log = logging.getLogger("x0tta6bl4.bus")

RETRYABLE = (OSError, asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error)
ENV_NKEY, ENV_CA, ENV_IDENTITY = "X0TTA6BL4_NATS_NKEY_FILE", "X0TTA6BL4_NATS_CA_FILE", "X0TTA6BL4_NATS_IDENTITY"
ENV_EVENT_LOOP = "X0TTA6BL4_EVENT_LOOP"
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class EventLoopError(ConfigError, ValueError):
    """X0TTA6BL4_EVENT_LOOP names no event loop this process can run; str() says which and why."""


def install_event_loop(env: Mapping[str, str] | None = None) -> str:
    """Choose the event loop of this process's later ``asyncio.run()`` (call it first, once, in a service's or a
    mesh host's main) and return its name. ``X0TTA6BL4_EVENT_LOOP``: ``auto`` (default) - uvloop when it is
    installed, else asyncio's; ``uvloop`` - uvloop or an error; ``asyncio`` - the standard loop.

    Why: on the secured bus every message is a TLS record, and uvloop's TLS transport costs a Python client
    about half the CPU per record of asyncio's (bench/bench_bus.py measures both loops in the same run)."""
    choice = ((os.environ if env is None else env).get(ENV_EVENT_LOOP) or "auto").strip().lower()
    if choice not in EVENT_LOOPS:
        raise EventLoopError(f"{ENV_EVENT_LOOP}={choice!r}: expected one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        asyncio.set_event_loop_policy(None)
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopError(f"{ENV_EVENT_LOOP}=uvloop: uvloop is not installed (pip install uvloop, or "
                                 f"{ENV_EVENT_LOOP}=asyncio)") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


class _TlsEofNoise(logging.Filter):
    """nats-py upgrades its plain stream to TLS, so at every close asyncio warns "returning true from
    eof_received() has no effect when using ssl" (harmless): not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_TlsEofNoise())


class CredentialsError(Exception):
    """A credentials or CA file is missing or unreadable; str() names the setting and the file."""


@dataclass(frozen=True)
class NatsCredentials:
    """Who a process is on the bus: its identity's nkey seed, the CA that signed the server's certificate,
    and the identity's name (its reply inbox prefix, see :mod:`x0tta6bl4.bus.permissions`)."""
    identity: str
    nkey_file: pathlib.Path
    ca_file: pathlib.Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NatsCredentials | None:
        """From X0TTA6BL4_NATS_NKEY_FILE / _CA_FILE / _IDENTITY; None when no nkey file is set."""
        env = os.environ if env is None else env
        nkey = env.get(ENV_NKEY)
        if not nkey:
            return None
        identity = env.get(ENV_IDENTITY) or pathlib.Path(nkey).stem
        ca = env.get(ENV_CA)
        return cls(identity, pathlib.Path(nkey), pathlib.Path(ca) if ca else None).check()

    @classmethod
    def in_secrets(cls, secrets_dir: pathlib.Path, identity: str) -> NatsCredentials | None:
        """An identity's credentials in a secrets directory (``meshctl secrets init``), if it has them."""
        nkey = pathlib.Path(secrets_dir) / "creds" / f"{identity}.nk"
        if not nkey.is_file():
            return None
        ca = pathlib.Path(secrets_dir) / "ca" / "ca.pem"
        return cls(identity, nkey, ca if ca.is_file() else None)

    def check(self) -> NatsCredentials:
        for setting, path in ((ENV_NKEY, self.nkey_file), (ENV_CA, self.ca_file)):
            if path is not None and not os.access(path, os.R_OK):
                raise CredentialsError(f"{setting}={str(path)!r}: no such readable file")
        return self

    def options(self) -> dict[str, Any]:
        """nats-py connect() keyword arguments."""
        opts: dict[str, Any] = {"nkeys_seed": str(self.nkey_file), "inbox_prefix": inbox_prefix(self.identity)}
        if self.ca_file is not None:
            opts["tls"] = ssl.create_default_context(cafile=str(self.ca_file))
        return opts


def _servers(url: str, creds: NatsCredentials | None) -> list[str]:
    out = [u.strip() for u in url.split(",")]
    if creds is not None and creds.ca_file is not None:   # TLS: nats:// is upgraded, tls:// is explicit
        out = ["tls://" + u.split("://", 1)[1] if u.startswith("nats://") else u for u in out]
    return out


async def connect(url: str, name: str, connect_timeout_s: float = 60.0,
                  creds: NatsCredentials | None = None,
                  on_reconnected: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """Connect with back-off, then keep reconnecting for ever through broker restarts.
    ``creds``: this process's identity (default: from the environment, see :class:`NatsCredentials`);
    ``on_reconnected``: called after each reconnection."""
    creds = creds if creds is not None else NatsCredentials.from_env()

    async def _disconnected() -> None:
        log.warning("%s: disconnected from NATS, reconnecting", name)

    async def _reconnected() -> None:
        log.info("%s: reconnected to NATS", name)
        if on_reconnected is not None:
            await on_reconnected()

    async def _error(e: Exception) -> None:
        log.debug("%s: NATS error: %s", name, e)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        stop=stop_after_delay(connect_timeout_s),
        reraise=True,
    ):
        with attempt:
            return await nats.connect(
                servers=_servers(url, creds),
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                allow_reconnect=True,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
                error_cb=_error,
                **(creds.options() if creds is not None else {}),
            )
    raise RuntimeError("unreachable")


async def connect_once(url: str, name: str, timeout_s: float = 10.0, connect_timeout_s: float = 2.0,
                       creds: NatsCredentials | None = None) -> NATS:
    """One bounded, quiet connection attempt for clients (CLI, MCP, scripts, edge sync): raises when no
    broker answers instead of retrying for ever; nats-py's per-attempt tracebacks are silenced."""
    creds = creds if creds is not None else NatsCredentials.from_env()

    async def _quiet(_e: Exception) -> None:
        return None
    return await asyncio.wait_for(
        nats.connect(servers=_servers(url, creds), name=name, connect_timeout=connect_timeout_s,
                     allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=_quiet,
                     **(creds.options() if creds is not None else {})), timeout_s)


def stream_config(s: subjects.Stream, replicas: int = 1, telemetry_partitions: int = 1) -> StreamConfig:
    """A stream's configuration; MESH with ``telemetry_partitions`` > 1 stores each report under its node's
    partition (:func:`x0tta6bl4.bus.subjects.telemetry_transform`)."""
    transform = subjects.telemetry_transform(telemetry_partitions) if s.name == subjects.STREAM_MESH else None
    return StreamConfig(
        name=s.name,
        subjects=list(s.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=s.max_age_s or None,
        max_bytes=s.max_bytes,
        duplicate_window=s.duplicate_window_s,
        num_replicas=replicas,
        deny_delete=s.deny_delete,
        deny_purge=s.deny_delete,
        discard=DiscardPolicy.NEW if s.discard_new else DiscardPolicy.OLD,
        allow_direct=True,
        subject_transform=None if transform is None else SubjectTransform(src=transform[0], dest=transform[1]),
    )


async def ensure_topology(js: JetStreamContext, replicas: int = 1, max_deliver: int = 5,
                          ack_wait_s: float = 30.0, telemetry_partitions: int = 1) -> None:
    """Create or update every stream, bucket and durable consumer (idempotent, safe from many replicas).
    On a secured bus only the provisioner may (see :mod:`x0tta6bl4.bus.permissions`). With
    ``telemetry_partitions`` > 1 (X0TTA6BL4_MONITOR_PARTITIONS) MESH stores telemetry by partition and each
    partition gets its durable consumer ``monitor-telemetry-p<i>``."""
    if not 1 <= telemetry_partitions <= subjects.MAX_MONITOR_PARTITIONS:
        raise ValueError(f"telemetry partitions: {telemetry_partitions}, expected 1 to "
                         f"{subjects.MAX_MONITOR_PARTITIONS}")
    for s in subjects.STREAMS:
        cfg = stream_config(s, replicas, telemetry_partitions)
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)
    for b in subjects.BUCKETS:
        try:
            await js.key_value(b.name)
        except (NotFoundError, nats.js.errors.BucketNotFoundError):
            with contextlib.suppress(BadRequestError):   # created concurrently by another replica
                await js.create_key_value(KeyValueConfig(bucket=b.name, history=b.history,
                                                         ttl=b.ttl_s or None, replicas=replicas))
    for c in (*subjects.CONSUMERS, *subjects.partition_consumers(telemetry_partitions)):
        try:
            await js.consumer_info(c.stream, c.durable)
        except NotFoundError:
            with contextlib.suppress(BadRequestError):   # created concurrently
                await js.add_consumer(c.stream, consumer_config(c, max_deliver, ack_wait_s))


async def missing_topology(js: JetStreamContext, streams: Iterable[str] = (), buckets: Iterable[str] = ()
                           ) -> list[str]:
    """The streams and buckets among these that do not exist (a service checks what it needs; it cannot
    create them on a secured bus)."""
    missing = []
    for name in [*streams, *(f"KV_{b}" for b in buckets)]:
        try:
            await js.stream_info(name)
        except NotFoundError:
            missing.append(name if not name.startswith("KV_") else f"bucket {name[3:]}")
    return missing


def consumer_config(c: subjects.Consumer, max_deliver: int, ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=c.durable,
        filter_subject=c.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait_s,
        max_ack_pending=1024,
    )
