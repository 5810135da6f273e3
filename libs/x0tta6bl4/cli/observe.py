"""meshctl trace / audit / cycle / dlq / bus: looking at what the orchestrator did."""
from __future__ import annotations

import json
import pathlib
import time
from collections import defaultdict

import typer
from rich.table import Table
from rich.tree import Tree

from x0tta6bl4.audit.chain import TrailReport, parse_event, trusted_keys, verify_chains
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import message_class
from x0tta6bl4.bus.reader import follow, kv_snapshot, read_all
from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, connect, console, fail, nats_url, run
from x0tta6bl4.telemetry.tracing import load_spans, spans_for
from x0tta6bl4.trust import TrustBundle, TrustError
from x0tta6bl4.v1 import events_pb2

NatsOpt = typer.Option(None, "--nats", help="NATS URL (default: the running stack's)")
DataOpt = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory")

audit_app = typer.Typer(help="The signed, hash-chained audit trail.", no_args_is_help=True)
cycle_app = typer.Typer(help="Past MAPE-K cycles.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: messages that were parked.", no_args_is_help=True)


def decode_msg(msg):
    t = (msg.headers or {}).get("X0-Type")
    if not t:
        return None
    cls = message_class(t)
    return cls.FromString(msg.data)


def trace_id_of(msg) -> str:
    tp = (msg.headers or {}).get("traceparent", "")
    parts = tp.split("-")
    return parts[1] if len(parts) == 4 else ""


# ---- trace ------------------------------------------------------------------
def trace_tree(spans: list[dict], title: str) -> Tree:
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict]] = defaultdict(list)
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in by_id else None
        children[parent].append(s)
    t0 = min(s["start_ns"] for s in spans)
    root = Tree(title)

    def add(node: Tree, s: dict) -> None:
        ms = (s["end_ns"] - s["start_ns"]) / 1e6
        at = (s["start_ns"] - t0) / 1e6
        style = "red" if s["status"] == "ERROR" else "green"
        sub = node.add(f"[{style}]{s['service']}[/] {s['name']}  [dim]+{at:.1f} ms[/]  [bold]{ms:.2f} ms[/]")
        for c in sorted(children[s["span_id"]], key=lambda c: c["start_ns"]):
            add(sub, c)

    for s in sorted(children[None], key=lambda c: c["start_ns"]):
        add(root, s)
    return root


def trace(key: str = typer.Argument(..., help="cycle id or trace id"), data_dir: pathlib.Path = DataOpt) -> None:
    """Print one MAPE-K cycle as a tree of spans with stage latencies."""
    spans = spans_for(load_spans(data_dir), key)
    if not spans:
        fail(f"no spans for {key!r} in {data_dir}/spans (spans are written about 0.2 s after a stage ends)")
    trace_ids = sorted({s["trace_id"] for s in spans})
    total = (max(s["end_ns"] for s in spans) - min(s["start_ns"] for s in spans)) / 1e6
    console.print(trace_tree(spans, f"trace [bold]{', '.join(trace_ids)}[/]  ({len(spans)} spans, {total:.1f} ms)"))


# ---- audit ------------------------------------------------------------------
def _audit_row_of(data: bytes) -> list[str]:
    try:
        return _audit_row(parse_event(data))
    except ValueError as e:
        return ["?", "?", "(unreadable)", "", str(e)[:120], ""]


def _audit_row(ev: events_pb2.AuditEvent) -> list[str]:
    ts = (time.strftime("%H:%M:%S", time.localtime(ev.meta.ts_unix_ns / 1e9))
          + f".{ev.meta.ts_unix_ns // 1_000_000 % 1000:03d}")
    details = ", ".join(f"{k}={v}" for k, v in sorted(ev.details.items()) if v)
    return [ts, ev.service, ev.event_type, ev.subject_id, details[:120], ev.meta.cycle_id[:12]]


@audit_app.command("tail")
def audit_tail(last: int = typer.Option(20, help="how many past events to show"),
               follow_: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
               service: str = typer.Option("*", help="only this service's events"),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Show the newest audit events (decoded from protobuf)."""
    subject = subjects.AUDIT_ALL if service == "*" else subjects.audit_of(service)   # token() would escape "*"

    async def go():
        nc = await connect(nats_url(nats, data_dir))
        js = nc.jetstream()
        msgs = await read_all(js, subject, stream=subjects.STREAM_AUDIT, last=last)
        table = Table("time", "service", "event", "subject", "details", "cycle")
        for m in msgs:
            table.add_row(*_audit_row_of(m.data))
        console.print(table)
        if follow_:
            async for m in follow(js, subject, new_only=True):
                console.print("  ".join(_audit_row_of(m.data)))
        await nc.close()
    run(go())


TrustOpt = typer.Option(None, "--trust", envvar="X0TTA6BL4_TRUST_FILE",
                        help="trust bundle with the services' public keys (default: <data-dir>/secrets/trust.json)")
RootOpt = typer.Option(None, "--keyvault-root", envvar="X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT",
                       help="fingerprint (sha256:<hex>) of keyvault's root key, pinned out of band (default: the "
                            "stack's secrets/keyvault/root.pub): edge chains are verified against the key records "
                            "it signed; without a pinned root they are reported unverified")


def pinned_keyvault_root(fingerprint: str | None, data_dir: pathlib.Path, bucket_root: bytes | None):
    """(the keyvault root public key, "") when a fingerprint is pinned and a key matching it is found (the
    deployment's secrets/keyvault/root.pub, else the ``keys`` bucket's informational copy); else (None, why)."""
    from x0tta6bl4.audit.chain import NO_KEYVAULT_ROOT
    from x0tta6bl4.keyvault import pin
    secrets_dir = data_dir / "secrets"
    fp = fingerprint or pin.pinned_fingerprint(secrets_dir)
    if not fp:
        return None, NO_KEYVAULT_ROOT
    try:
        fp = pin.normalize(fp)
    except pin.RootPinError as e:
        fail(str(e))
    pub = secrets_dir / pin.ROOT_PUB_FILE
    why = "no copy of the key found"
    for source, raw in ((str(pub), pub.read_bytes() if pub.is_file() else None), ("the keys bucket", bucket_root)):
        if not raw:
            continue
        try:
            return pin.check(raw, fp, source=source), ""
        except Exception as e:  # noqa: BLE001 - not this fingerprint or not a key at all: try the next copy
            why = str(e)
    return None, f"no keyvault root matching the pinned {fp} ({why})"


def keyvault_directory(root, entries: dict[str, bytes]):
    """A directory of the ``keys`` bucket's records that verify against the pinned root (others are dropped:
    returned as the count of entries that did not verify)."""
    from x0tta6bl4.keyvault.distribution import KeyDirectory
    from x0tta6bl4.pqc import PQCError
    directory, rejected = KeyDirectory(root), 0
    for key, value in sorted(entries.items()):
        if key == "root":
            continue                      # the informational copy of the root (checked by fingerprint)
        try:
            directory.apply(key, value)
        except (PQCError, ValueError):
            rejected += 1
    return directory, rejected


def read_trail(stored) -> tuple[list[events_pb2.AuditEvent], list[str]]:
    """The audit events of stored messages, and a description of every entry that is not one."""
    events, garbage = [], []
    for m in stored:
        try:
            events.append(parse_event(m.data))
        except ValueError as e:
            seq = m.metadata.sequence.stream if m.metadata else "?"
            garbage.append(f"stream seq {seq} on {m.subject}: {e}")
    return events, garbage


def print_report(report: TrailReport, rejected_records: int = 0) -> None:
    for r in report.bad:
        what = "unreadable entries" if not r.chain_id else f"chain {r.chain_id} ({r.service})"
        console.print(f"[red]✗[/] {what}: {r.events} event(s), {r.verified} verified; {r.summary()}")
    for r in report.unverified:
        console.print(f"[yellow]?[/] chain {r.chain_id} ({r.service}): {r.events} event(s) unverified: {r.unverified}")
    if rejected_records:
        console.print(f"[yellow]![/] {rejected_records} entries of the keys bucket do not verify against the "
                      "pinned keyvault root (ignored)")
    intact = [r for r in report.results.values() if r.ok and not r.unverified]
    console.print(f"[green]✓[/] {len(intact)} chain(s) intact, {sum(r.events for r in intact)} events "
                  "signed by trusted keys, no gap, no edit")


@audit_app.command("verify")
def audit_verify(nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt,
                 trust: pathlib.Path | None = TrustOpt, keyvault_root: str | None = RootOpt,
                 json_out: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Prove the audit trail has no gap and no edit and that trusted keys signed it: every entry is checked;
    garbage, forged, edited, unknown-key and broken-link entries are reported per chain and the rest verified.
    Services' chains are checked against the trust bundle, edge nodes' against keyvault-signed key records.
    Exit code 1 when anything is wrong."""
    from x0tta6bl4.keyvault.distribution import BUCKET as KEYS_BUCKET
    from x0tta6bl4.keyvault.distribution import ROOT_KEY
    path = trust or data_dir / "secrets" / "trust.json"
    try:
        bundle = TrustBundle.load(path)
    except TrustError as e:
        fail(f"{e}: the trust bundle is needed to know whose keys to trust (--trust or X0TTA6BL4_TRUST_FILE)")

    async def go():
        nc = await connect(nats_url(nats, data_dir))
        js = nc.jetstream()
        stored = await read_all(js, subjects.AUDIT_ALL, stream=subjects.STREAM_AUDIT)
        try:
            records = await kv_snapshot(js, KEYS_BUCKET, timeout=5.0)   # root-signed: each is checked
        except Exception:  # noqa: BLE001 - not readable with these credentials: edge chains stay unverified
            records = {}
        await nc.close()
        return stored, records
    stored, records = run(go())
    events, garbage = read_trail(stored)
    root, why = pinned_keyvault_root(keyvault_root, data_dir, records.get(ROOT_KEY))
    directory, rejected = keyvault_directory(root, records) if root is not None else (None, 0)
    report = verify_chains(events, trusted_keys(bundle, directory, unverified=why), garbage)
    if json_out:
        typer.echo(json.dumps({**report.to_dict(), "keys_records_rejected": rejected}))
    else:
        print_report(report, rejected)
    if not report.ok:
        counts = ", ".join(f"{n} {kind}" for kind, n in report.counts.items())
        fail(f"audit trail NOT intact: {counts} in {report.events} entries ({report.verified} verified)")


# ---- cycles -----------------------------------------------------------------
STAGES = [(subjects.MAPEK_TELEMETRY, "monitor"), (subjects.MAPEK_ANOMALY, "analyze"), (subjects.MAPEK_PLAN, "plan"),
          (subjects.MAPEK_ACTION, "execute"), (subjects.MAPEK_RESULT, "result"), (subjects.MAPEK_VERIFIED, "verify"),
          (subjects.MAPEK_ESCALATION, "escalate")]
ACTED = (subjects.MAPEK_ACTION, subjects.MAPEK_RESULT, subjects.MAPEK_VERIFIED, subjects.MAPEK_ESCALATION)


async def load_cycles(js) -> dict[str, list]:
    cycles: dict[str, list] = defaultdict(list)
    for m in await read_all(js, subjects.MAPEK_ALL, stream=subjects.STREAM_MAPEK):
        if m.subject == subjects.MAPEK_HEALTH:
            continue
        ev = decode_msg(m)
        if ev is not None and ev.meta.cycle_id:
            cycles[ev.meta.cycle_id].append((m, ev))
    return cycles


def summarize(events: list) -> str:
    parts = []
    for m, ev in events:
        if m.subject == subjects.MAPEK_ANOMALY:
            parts.append(f"{ev.fault_type}@{ev.root_cause} ({ev.confidence:.2f})")
        elif m.subject == subjects.MAPEK_PLAN:
            parts.append(events_pb2.DecisionKind.Name(ev.decision).removeprefix("DECISION_KIND_").lower())
        elif m.subject == subjects.MAPEK_VERIFIED:
            parts.append(("recovered" if ev.recovered else "NOT recovered") + f" mttr={ev.mttr_ms:.0f}ms")
        elif m.subject == subjects.MAPEK_ESCALATION:
            parts.append(f"ESCALATED ({ev.reason})")
    return " → ".join(parts)


def acted(events: list) -> bool:
    """Whether a cycle did (or asked to do) something: an action, its result or verification, an
    escalation, or a plan that is more than an observation (a vote)."""
    for m, ev in events:
        if m.subject in ACTED:
            return True
        if m.subject == subjects.MAPEK_PLAN and ev.decision != events_pb2.DECISION_KIND_OBSERVE:
            return True
    return False


def cycles_to_show(cycles: dict[str, list], all_: bool, last: int) -> tuple[list[tuple[str, list]], int]:
    """The newest ``last`` cycles to list (those that acted; with ``all_`` every cycle), oldest first, and
    how many older or observe-only ones were left out."""
    shown = [(c, e) for c, e in cycles.items() if all_ or acted(e)]
    shown.sort(key=lambda kv: kv[1][0][1].meta.ts_unix_ns)
    return shown[-last:] if last > 0 else [], len(cycles) - min(len(shown), max(last, 0))


@cycle_app.command("list")
def cycle_list(last: int = typer.Option(20, min=1, help="how many cycles to show (the newest)"),
               all_: bool = typer.Option(False, "--all", help="also observe-only cycles and those that found "
                                                              "nothing (path_degraded every second ...)"),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Past cycles that acted (an action, a vote, an escalation) with their trace ids and outcome."""
    async def go():
        nc = await connect(nats_url(nats, data_dir))
        c = await load_cycles(nc.jetstream())
        await nc.close()
        return c
    cycles = run(go())
    shown, hidden = cycles_to_show(cycles, all_, last)
    table = Table("started", "cycle", "trace", "stages", "summary")
    for cid, evs in shown:
        t = time.strftime("%H:%M:%S", time.localtime(evs[0][1].meta.ts_unix_ns / 1e9))
        stages = "/".join(dict(STAGES).get(m.subject, "?") for m, _ in evs)
        table.add_row(t, cid, trace_id_of(evs[0][0]), stages, summarize(evs))
    console.print(table)
    if hidden:
        console.print(f"[dim]{hidden} other cycle(s) not shown"
                      + ("" if all_ else " (observe-only, found nothing, or older: --all, --last N)") + "[/]")


def timeline_table(evs: list) -> Table:
    t0 = evs[0][1].meta.ts_unix_ns
    table = Table("t+ms", "stage", "subject", "by", "detail")
    for m, ev in evs:
        detail = ""
        if m.subject == subjects.MAPEK_TELEMETRY:
            detail = f"trigger {ev.trigger_node}: {'; '.join(ev.trigger_reasons)}"
        elif m.subject == subjects.MAPEK_ANOMALY:
            detail = (f"{ev.fault_type} root={ev.root_cause} score={ev.anomaly_score:.2f} "
                      f"conf={ev.confidence:.2f} [{ev.detector}]")
        elif m.subject == subjects.MAPEK_PLAN:
            detail = (f"{events_pb2.DecisionKind.Name(ev.decision).removeprefix('DECISION_KIND_')}: "
                      f"{events_pb2.ActionKind.Name(ev.action.kind).removeprefix('ACTION_KIND_')} "
                      f"{ev.action.target_node} (twin: connectivity {ev.predicted_connectivity:.2f})")
        elif m.subject == subjects.MAPEK_ACTION:
            kind = events_pb2.ActionKind.Name(ev.action.kind).removeprefix("ACTION_KIND_")
            detail = f"{kind} {ev.action.target_node} approved by {ev.approved_by}"
        elif m.subject == subjects.MAPEK_RESULT:
            ok = sum(s.ok for s in ev.steps)
            detail = (f"{'success' if ev.success else 'FAILED'}: {ok}/{len(ev.steps)} steps "
                      f"in {ev.duration_ms:.0f} ms {ev.error[:60]}")
        elif m.subject == subjects.MAPEK_VERIFIED:
            detail = (f"{'recovered' if ev.recovered else 'NOT recovered'}; MTTR {ev.mttr_ms:.0f} ms; "
                      + "; ".join(list(ev.checks_passed) + list(ev.checks_failed))[:80])
        table.add_row(f"{(ev.meta.ts_unix_ns - t0) / 1e6:.1f}", dict(STAGES).get(m.subject, "?"), m.subject,
                      ev.meta.producer, detail)
    return table


@cycle_app.command("show")
def cycle_show(cycle_id: str, nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """One cycle: its events in order, then its trace."""
    async def go():
        nc = await connect(nats_url(nats, data_dir))
        c = await load_cycles(nc.jetstream())
        await nc.close()
        return c
    cycles = run(go())
    matches = [c for c in cycles if c.startswith(cycle_id)]
    if len(matches) != 1:
        fail(f"no cycle {cycle_id!r}" if not matches else f"{cycle_id!r} is ambiguous ({len(matches)} cycles)")
    evs = cycles[matches[0]]
    console.print(f"cycle [bold]{matches[0]}[/]  trace [bold]{trace_id_of(evs[0][0])}[/]")
    console.print(timeline_table(evs))
    spans = spans_for(load_spans(data_dir), matches[0])
    if spans:
        console.print(trace_tree(spans, "spans"))


@cycle_app.command("run")
def cycle_run(wait_s: float = typer.Option(15.0, "--wait", help="how long to follow the cycle"),
              nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Run a MAPE-K cycle now over the latest telemetry and show what it did."""
    import asyncio
    import json

    async def go():
        nc = await connect(nats_url(nats, data_dir))
        try:
            reply = await nc.request(subjects.MONITOR_CYCLE, b"", timeout=5)
        except Exception:  # noqa: BLE001 - timeout, no responders, lost connection: one clear line
            await nc.close()
            fail("no monitor answered on monitor.rpc.Cycle: is the stack up? (make up)")
        cycle_id = json.loads(reply.data)["cycle_id"]
        console.print(f"cycle [bold]{cycle_id}[/] started over {json.loads(reply.data)['nodes']} nodes")
        deadline = time.monotonic() + wait_s
        evs = []
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            evs = (await load_cycles(nc.jetstream())).get(cycle_id, [])
            subjects_seen = {m.subject for m, _ in evs}
            if subjects.MAPEK_VERIFIED in subjects_seen:
                break
            if len(evs) == 1 and time.monotonic() > deadline - wait_s + 3:
                break  # analyzed, nothing found
        await nc.close()
        return cycle_id, evs
    _cycle_id, evs = run(go())
    if evs:
        console.print(timeline_table(evs))
    if len(evs) <= 1:
        console.print("no anomaly: nothing to plan")


@dlq_app.command("list")
def dlq_list(nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Parked messages with the reason they were parked."""
    async def go():
        nc = await connect(nats_url(nats, data_dir))
        msgs = await read_all(nc.jetstream(), subjects.DEAD_LETTER_ALL, stream=subjects.STREAM_DLQ)
        await nc.close()
        return msgs
    table = Table("consumer", "subject", "deliveries", "reason")
    for m in run(go()):
        d = events_pb2.DeadLetter.FromString(m.data)
        table.add_row(d.consumer, d.original_subject, str(d.deliveries), d.reason)
    console.print(table)


def bus() -> None:
    """The streams, subjects and durable consumers."""
    console.print(subjects.describe())
