"""make bench-mttr: measured repair time on the embedded stack.

A 50-node grid of real UDP node agents with a DATA flow corner to corner, the
six services as separate processes, the bus secured as in production (TLS, one
nkey identity per process, the permission table; the mesh host as its own
identity). Each trial kills a random node on the
active path (read from the agents' routing tables), then follows the cycle on
the bus: detection (first neighbour_lost report), plan, action result and
verified recovery, all measured from the kill. Between trials the fault ends (a killed node is revived),
the mesh is let settle, and the loop reinstates the victim after its probation, as in production.

Secure by default: the mesh runs with keys (the host generates its nodes' keys and keyvault certifies
them; control packets are authenticated -- ML-DSA-65 signatures at first contact, link MACs once a PQC
channel is up -- and DATA travels in hybrid ML-KEM/X25519 AES-256-GCM channels). The same trials are then
run again on a fresh stack with mesh keys off, as the comparison printed beside it (``--no-compare``
skips it; ``--no-keys`` runs only the keys-off figure). Each pass reports the mesh host's CPU per node
(process CPU time / wall time / nodes over the trials) and the load average.

    python bench/bench_mttr.py [--nodes 50] [--trials 20] [--no-compare | --no-keys]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import kv_snapshot, mesh_telemetry
from x0tta6bl4.mapek.health import classify_node, link_clearly_bad
from x0tta6bl4.rpc.svid import mint as mint_svid
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import Stack, repo_root
from x0tta6bl4.v1 import events_pb2, mesh_pb2

C = mesh_pb2.MeshCommand
DUMP = os.environ.get("X0TTA6BL4_BENCH_DUMP", "")   # a file: each false action's finding and its window


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else float("nan")


class Recorder:
    def __init__(self):
        self.events: list[tuple[int, str, object]] = []   # (received ns, subject, message)
        self.windows: dict[str, events_pb2.TelemetryWindow] = {}     # cycle id -> window (X0TTA6BL4_BENCH_DUMP)

    async def on_msg(self, m):
        now = time.time_ns()
        cls = {subjects.MAPEK_PLAN: events_pb2.Plan, subjects.MAPEK_ACTION: events_pb2.ActionRequest,
               subjects.MAPEK_RESULT: events_pb2.ActionResult, subjects.MAPEK_VERIFIED: events_pb2.Verification,
               subjects.MAPEK_ANOMALY: events_pb2.Anomaly,
               subjects.MAPEK_ESCALATION: events_pb2.Escalation}.get(m.subject)
        if cls is None and m.subject.startswith("mesh.event."):
            cls = mesh_pb2.MeshEvent
        if m.subject == subjects.MAPEK_TELEMETRY and DUMP:      # the windows, to explain false actions
            w = events_pb2.TelemetryWindow.FromString(m.data)
            self.windows[w.meta.cycle_id] = w
            while len(self.windows) > 400:
                self.windows.pop(next(iter(self.windows)))
        if cls is not None:
            self.events.append((now, m.subject, cls.FromString(m.data)))

    def dump(self, anomaly, path: str) -> None:
        """The window a (false) finding came from, around its root cause, as one JSON line in ``path``."""
        w = self.windows.get(anomaly.meta.cycle_id)
        if w is None:
            return
        nodes = {t.node_id: t for t in w.nodes}
        root = nodes.get(anomaly.root_cause)
        near = {anomaly.root_cause, *anomaly.affected_nodes, *(root.neighbours if root else [])}
        doc = {"incident": anomaly.incident_id, "reasons": list(anomaly.top_features),
               "nodes": {n: {"loss_pct": t.loss_pct, "p99": t.p99_latency_ms, "reachable": t.reachable,
                             "avoided": list(t.avoided), "links": {q.peer: [round(q.loss_rate, 3),
                                                                          round(q.latency_ms, 1)] for q in t.links}}
                         for n, t in nodes.items() if n in near}}
        with open(path, "a") as fh:
            fh.write(json.dumps(doc) + "\n")

    def since(self, t0: int):
        return [(t, s, e) for t, s, e in self.events if t >= t0]


async def telemetry(js) -> dict[str, events_pb2.NodeTelemetry]:
    return await mesh_telemetry(js)

def path(tel, src, dst):
    p, cur = [src], src
    while cur != dst and len(p) < 64:
        nxt = tel.get(cur).routes.get(dst) if cur in tel else None
        if not nxt or nxt in p:
            return None
        p.append(nxt)
        cur = nxt
    return p if cur == dst else None


async def command(nc, node, kind, peer="", *, params: dict | None = None, **kw):
    """A MeshCommand to ``node`` (``params`` and keyword arguments become its params); the host's answer."""
    ps = {k: str(v) for k, v in {**(params or {}), **kw}.items()}
    cmd = C(meta=new_meta("bench"), node_id=node, kind=kind, peer=peer, params=ps)
    r = await nc.request(subjects.mesh_cmd(node), cmd.SerializeToString(), timeout=5)
    return mesh_pb2.MeshEvent.FromString(r.data)


async def fault_command(nc, node, **params) -> None:
    """A FAULT for ``node``; a refusal by its host is an error naming the node and the host's words."""
    ev = await command(nc, node, C.KIND_FAULT, params=params)
    if ev.kind != "command.ok":
        raise RuntimeError(f"FAULT {params} on {node} refused: {ev.kind} {dict(ev.details) if ev.details else ''}")


async def settle(js, nodes, src, timeout=30.0, nc=None, cleared: list | None = None, keep: set | None = None,
                 probation_wait: float = 0.0):
    """Wait until every node reports, is reachable and none is critical, and the source's flow delivers.
    With ``nc``: nodes avoided anywhere that are not earlier victims (``keep``: the loop reinstates those
    after their probation) -- the loop's actions on a starting mesh or a trial's false actions -- are
    un-avoided (once per 3 s per entry: telemetry lags the command), so every trial starts on a clean mesh;
    each (node, avoided) pair so cleared is appended to ``cleared``. ``probation_wait``: also wait, up to
    this long, until the loop has reinstated every earlier victim (faults that do not overlap)."""
    deadline = time.monotonic() + timeout
    probation_deadline = min(time.monotonic() + probation_wait, deadline - 5.0)
    why = "no telemetry"
    sent: dict[tuple[str, str], float] = {}
    while time.monotonic() < deadline:
        tel = await telemetry(js)
        now = time.monotonic()
        stale = [(n, a) for n, t in tel.items() for a in t.avoided
                 if a not in (keep or ()) and now - sent.get((n, a), -1e9) > 3.0]
        if nc is not None and stale:
            await asyncio.gather(*(command(nc, n, C.KIND_UNAVOID_NODE, peer=a) for n, a in stale),
                                 return_exceptions=True)
            sent.update((x, now) for x in stale)
            if cleared is not None:
                cleared.extend(stale)
        if len(tel) >= len(nodes) and all(t.reachable for t in tel.values()) and tel[src].loss_pct == 0 \
                and tel[src].counters.get("acked", 0) > 0:
            bad = []
            for k, v in (await kv_snapshot(js, "health")).items():
                # end-to-end latency over a long path can sit in the warning band; critical must clear
                if k.startswith("node.") and int(v) == 3:
                    bad.append(k)
            # the links too: an earlier trial's fault leaves its trace in the link estimates (latency EWMA, loss
            # window) for seconds after it is removed, and a trial started meanwhile overlaps the last one
            slow = sorted({n for n, t in tel.items() for q in t.links if link_clearly_bad(q)})
            waiting = sorted({a for t in tel.values() for a in t.avoided if a in (keep or ())})
            if bad:
                why = "critical: " + "; ".join(f"{k[5:]} ({', '.join(classify_node(tel[k[5:]])[1])})"
                                               for k in bad[:4] if k[5:] in tel)
            elif slow:
                why = f"degraded links at {', '.join(slow[:6])}"
            elif waiting and time.monotonic() < probation_deadline:
                why = f"earlier victims on probation: {', '.join(waiting[:6])}"
            else:
                return tel
        elif tel:
            why = (f"{len(tel)}/{len(nodes)} nodes report, unreachable "
                   f"{[n for n, t in tel.items() if not t.reachable][:5]}, src loss "
                   f"{tel[src].loss_pct if src in tel else '-'}")
        await asyncio.sleep(0.25)
    raise TimeoutError(f"mesh did not settle: {why}")


class Voters:
    """Operators who approve every proposal at once (for the governed scenario)."""

    def __init__(self, addr: str, admin: tuple = (), n: int = 2, svid=None):
        from x0tta6bl4.pqc import MLDSA65PrivateKey
        from x0tta6bl4.v1 import governance_pb2 as g
        from x0tta6bl4.v1 import governance_pb2_grpc as gg
        self.g = g
        self.admin = admin                   # ledger admin token metadata (RegisterVoter)
        from x0tta6bl4.rpc import svid as svids
        me = svid or svids.operator_svid()               # mutual TLS as an operator
        self.channel = svids.aio_channel(addr, me, "governance", me.trust_domain)
        self.stub = gg.GovernanceStub(self.channel)
        self.keys = [(f"spiffe://x0tta6bl4.mesh/operator/bench{i}", MLDSA65PrivateKey.generate()) for i in range(n)]
        self.voted: set[str] = set()

    async def register(self):
        for name, key in self.keys:
            await self.stub.RegisterVoter(self.g.RegisterVoterRequest(voter=name, balance=100,
                                                                      public_key=key.public_key().public_bytes()),
                                          metadata=self.admin)

    async def approve_all(self, stop: asyncio.Event):
        import secrets

        from x0tta6bl4.governance import vote_signing_payload
        g = self.g
        while not stop.is_set():
            r = await self.stub.ListProposals(g.ListProposalsRequest(state=g.PROPOSAL_STATE_ACTIVE))
            for p in r.proposals:
                if p.id in self.voted:
                    continue
                self.voted.add(p.id)
                for name, key in self.keys:
                    nonce = secrets.token_bytes(16)
                    sig = key.sign(vote_signing_payload(p.id, name, "YES", 100.0, nonce))
                    await self.stub.CastVote(g.CastVoteRequest(proposal_id=p.id, voter=name, tokens=100.0,
                                                               nonce=nonce, signature=sig, choice=g.VOTE_CHOICE_YES))
            await asyncio.sleep(0.05)


SCENARIOS = {
    "kill": "node kills healed automatically",
    "degrade": "degraded nodes (links +150 ms) healed",
    "loss": "lossy relays healed",
    "flap": "flapping relays healed",
    "congestion": "congested relays healed",
}
GRAY = ("degrade", "loss", "flap", "congestion")
AFTER_S = 3.0          # the flow is measured over this long after the verification (or the trial's end)
HEALED_DELIVERY = 0.95  # ... and must deliver at least this share (the source delivered 100 % before: settle)


class Fault:
    """One scenario's fault on ``victim``, injected and removed through the mesh host's FAULT commands
    (what ``mesh.cmd.<node>`` carries out; agent level, no kernel tools on the loopback grid).

    * kill: the agent crashes.
    * degrade: every datagram the victim sends waits 150 ms (``latency``).
    * loss: ``loss_pct`` % of the datagrams the victim receives and sends are dropped at random
      (``loss`` with ``direction=both``; an agent without ``direction`` drops only what it receives).
    * flap: every link of the victim goes down and comes back every ``flap_period`` s (``block`` /
      ``unblock`` at both ends: the agent-level block is one-sided), until the trial ends.
    * congestion: the victim behaves as a node whose egress queue is full -- 100 ms of queueing delay on
      everything it sends and 5 % tail drops of what it receives and sends -- the twin's congestion
      signature (latency +90 ms, loss +5 % at full intensity; :mod:`x0tta6bl4.twin.telemetry`). It is an
      emulation: no cross traffic and no rate limit (``tc tbf`` needs namespaces), so throughput does not
      rise as it would on a saturated link.
    """

    def __init__(self, nc, scenario: str, victim: str, neighbours: list[str], *, loss_pct: float = 30.0,
                 flap_period: float = 1.0) -> None:
        self.nc, self.scenario, self.victim, self.neighbours = nc, scenario, victim, neighbours
        self.loss_pct, self.flap_period = loss_pct, flap_period
        self.task: asyncio.Task | None = None
        self.failed = 0

    async def inject(self) -> None:
        nc, v = self.nc, self.victim
        if self.scenario == "kill":
            await fault_command(nc, v, type="kill")
        elif self.scenario == "degrade":
            await fault_command(nc, v, type="latency", ms=150)
        elif self.scenario == "loss":
            await fault_command(nc, v, type="loss", pct=self.loss_pct, direction="both")
        elif self.scenario == "congestion":
            await fault_command(nc, v, type="latency", ms=100)
            await fault_command(nc, v, type="loss", pct=5, direction="both")
        elif self.scenario == "flap":
            await self._links("block")
            self.task = asyncio.create_task(self._flap())
        else:
            raise ValueError(f"unknown scenario {self.scenario!r}")

    async def _links(self, what: str) -> None:
        # a host that does not answer in time fails only this round of the flap (the next one retries);
        # a refusal is counted (``self.failed``)
        res = await asyncio.gather(*(fault_command(self.nc, self.victim, type=what, peer=p) for p in self.neighbours),
                                   *(fault_command(self.nc, p, type=what, peer=self.victim)
                                     for p in self.neighbours), return_exceptions=True)
        errors = [r for r in res if isinstance(r, BaseException)]
        self.failed += len(errors)
        if errors and self.failed == len(errors):
            print(f"flap {self.victim}: {len(errors)} of {len(res)} link commands failed, e.g. {errors[0]}", flush=True)

    async def _flap(self) -> None:
        down = True
        while True:
            await asyncio.sleep(self.flap_period)
            down = not down
            await self._links("block" if down else "unblock")

    async def remove(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            await self._links("unblock")
        await command(self.nc, self.victim, C.KIND_HEAL)  # clears impairments, revives a killed agent


async def flow_delivery(js, src: str, seconds: float) -> float | None:
    """The source's acknowledged / sent DATA over the next ``seconds`` (None if it sent nothing)."""
    a = (await telemetry(js)).get(src)
    await asyncio.sleep(seconds)
    b = (await telemetry(js)).get(src)
    if a is None or b is None:
        return None
    ds = b.counters.get("sent", 0) - a.counters.get("sent", 0)
    da = b.counters.get("acked", 0) - a.counters.get("acked", 0)
    return round(min(1.0, da / ds), 3) if ds > 0 else None


async def run(stack: Stack, nodes: list[str], trials: int, seed: int, restart_mesh, scenario: str = "kill",
              victims: list[str] | None = None, box: dict | None = None,
              neighbours: dict[str, list[str]] | None = None, loss_pct: float = 30.0,
              flap_period: float = 1.0, dst: str = "") -> dict:
    rng = random.Random(seed)
    nc = await stack.connect(name="bench-mttr")     # the operator: watches MAPE-K, injects the faults
    js = nc.jetstream()
    rec = Recorder()
    await nc.subscribe(subjects.MAPEK_ALL, cb=rec.on_msg)
    await nc.subscribe(subjects.MESH_EVENT_ALL, cb=rec.on_msg)
    src, dst = nodes[0], dst or nodes[-1]
    stop_voting = asyncio.Event()
    if scenario in GRAY:            # medium-confidence findings go to a vote
        voters = Voters(stack.grpc_addr("governance"), admin_metadata(directory=stack.data_dir),
                        svid=mint_svid(stack.secrets.root, "operator", "bench"))
        await voters.register()
        voting = asyncio.create_task(voters.approve_all(stop_voting))
    rows = []
    restarts = 0
    cleared: list = []
    victims_so_far: set[str] = set()
    windows: list[tuple[int, int]] = []    # each trial's fault to its end (received-time ns)
    startup_actions = None
    attempts = 0
    while len(rows) < trials and attempts < 3 * trials:   # a trial without a relay to fault is tried again
        attempts += 1
        trial = len(rows)
        try:
            tel = await settle(js, nodes, src, nc=nc, cleared=cleared, keep=victims_so_far)
        except TimeoutError as e:
            print(f"trial {trial}: {e}; restarting the mesh host", flush=True)
            restarts += 1
            await asyncio.to_thread(restart_mesh)
            try:
                tel = await settle(js, nodes, src, timeout=60, nc=nc, cleared=cleared, keep=victims_so_far)
            except TimeoutError as e2:       # counted as a trial not healed, and said why
                row = {"trial": trial, "victim": None, "unsettled": str(e2), "detect_ms": None, "plan_ms": None,
                       "act_ms": None, "verified_ms": None, "recovered": False, "healed": False,
                       "detected": False, "flow_after": None, "delivery_ratio": None, "false_actions": 0}
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
        if startup_actions is None:      # what the loop did while the mesh started (before any fault)
            startup_actions = [f"{events_pb2.ActionKind.Name(e.action.kind)} {e.action.target_node}"
                               for t, s, e in rec.events if s == subjects.MAPEK_ACTION]
        if box is not None and trial == 0:       # the host's CPU is measured over the trials, not its start
            box["cpu0"] = (time.monotonic(), box["mesh"].cpu())
        p = path(tel, src, dst)
        if not p or len(p) < 3:
            await asyncio.sleep(0.5)
            continue
        victim = rng.choice(p[1:-1])
        if victims:                      # --victims: kill these (in turn) instead of a random relay
            victim = victims[trial % len(victims)]
        victims_so_far.add(victim)
        sent0, acked0 = tel[src].counters.get("sent", 0), tel[src].counters.get("acked", 0)
        t_kill = time.time_ns()
        fault = Fault(nc, scenario, victim, (neighbours or {}).get(victim, []), loss_pct=loss_pct,
                      flap_period=flap_period)
        await fault.inject()
        verified = None
        deadline = time.monotonic() + (40 if scenario in GRAY else 20)
        while time.monotonic() < deadline and verified is None:
            await asyncio.sleep(0.02)
            for t, s, e in rec.since(t_kill):
                if s == subjects.MAPEK_VERIFIED and e.action.target_node == victim:
                    verified = (t, e)
        evs = rec.since(t_kill)
        t_detect = min((t for t, s, e in evs
                        if (s.startswith("mesh.event.") and e.kind == "neighbour_lost" and e.peer == victim)
                        or (s == subjects.MAPEK_ANOMALY and e.root_cause == victim)), default=None)
        t_plan = min((t for t, s, e in evs if s == subjects.MAPEK_PLAN and e.root_cause == victim), default=None)
        t_act = min((t for t, s, e in evs if s == subjects.MAPEK_RESULT and e.action.target_node == victim),
                    default=None)
        # a REINSTATE of an earlier victim (back and healthy) undoes an avoid: not an action against a node
        wrong = [e for t, s, e in evs if s == subjects.MAPEK_ACTION and e.action.target_node != victim
                 and e.action.kind != events_pb2.ACTION_KIND_REINSTATE]
        false_actions = len(wrong)
        # what each false action was and which finding led to it (the anomaly of its incident)
        found = {e.incident_id: e for t, s, e in evs if s == subjects.MAPEK_ANOMALY}
        if DUMP:
            for e in wrong:
                if e.incident_id in found:
                    rec.dump(found[e.incident_id], DUMP)
        false_detail = [f"{events_pb2.ActionKind.Name(e.action.kind)[12:]} {e.action.target_node}: {e.incident_id}"
                        + (f" by {found[e.incident_id].detector} p={found[e.incident_id].confidence:.2f} "
                           f"({'; '.join(found[e.incident_id].top_features[:2])})"
                           if e.incident_id in found else "") for e in wrong]
        after = (await telemetry(js))[src]
        ds, da = after.counters.get("sent", 0) - sent0, after.counters.get("acked", 0) - acked0
        # gray failures: the flow must deliver again while the fault is still on (kills: measured too)
        flow_after = await flow_delivery(js, src, AFTER_S)
        acted_on_victim = any(s == subjects.MAPEK_ACTION and e.action.target_node == victim
                              for t, s, e in rec.since(t_kill))
        detected = t_detect is not None
        # healed: the loop acted on the victim and verified the repair, or (gray failures) it rightly did
        # not act -- the fault was detected, nothing was done to any node and the flow delivers anyway
        # (routing moved off the faulty node by itself); in both cases the flow delivers >= 95 % after
        healed_quiet = (scenario in GRAY and detected and not acted_on_victim and false_actions == 0
                        and flow_after is not None and flow_after >= HEALED_DELIVERY)
        healed = (bool(verified and verified[1].recovered) and flow_after is not None
                  and flow_after >= HEALED_DELIVERY) or healed_quiet
        row = {"trial": trial, "victim": victim, "path_len": len(p),
               "detect_ms": (t_detect - t_kill) / 1e6 if t_detect else None,
               "plan_ms": (t_plan - t_kill) / 1e6 if t_plan else None,
               "act_ms": (t_act - t_kill) / 1e6 if t_act else None,
               "verified_ms": (verified[0] - t_kill) / 1e6 if verified else None,
               "recovered": bool(verified and verified[1].recovered),
               "checks_failed": list(verified[1].checks_failed) if verified and not verified[1].recovered else [],
               "fault_type": next((e.fault_type for t, s, e in evs if s == subjects.MAPEK_ANOMALY
                                   and e.root_cause == victim), ""),
               "escalations": [e.reason for t, s, e in rec.since(t_kill) if s == subjects.MAPEK_ESCALATION],
               # what acted on the victim in the minute before the fault and since (its action budget's window)
               "victim_actions": [f"{(t - t_kill) / 1e9:+.1f}s {events_pb2.ActionKind.Name(e.action.kind)[12:]}"
                                  for t, s, e in rec.since(t_kill - 60 * 10**9)
                                  if s == subjects.MAPEK_ACTION and e.action.target_node == victim],
               "escalation_detail": [f"{e.incident_id}: {e.detail}"[:300] for t, s, e in rec.since(t_kill)
                                     if s == subjects.MAPEK_ESCALATION],
               # how the loop decided on the victim: each plan's decision, confidence and detector's first reason
               "victim_plans": [f"{events_pb2.DecisionKind.Name(e.decision)[14:]} p={e.confidence:.2f} "
                                f"{e.action.kind and events_pb2.ActionKind.Name(e.action.kind)[12:]}"
                                for t, s, e in evs if s == subjects.MAPEK_PLAN and e.root_cause == victim][:4],
               "detected": detected, "acted_on_victim": acted_on_victim, "flow_after": flow_after,
               "healed": healed, "healed_without_action": healed_quiet,
               "delivery_ratio": round(min(1.0, da / ds), 3) if ds else None, "false_actions": false_actions,
               "false_action_detail": false_detail}
        rows.append(row)
        windows.append((t_kill, time.time_ns()))
        print(json.dumps(row), flush=True)
        # restore: the fault ends (a killed node is revived); the loop reinstates the victim once it has served
        # its probation, as in production (un-avoiding it here, behind the loop's back, made its last symptoms
        # - links coming back after a flap, the tail of a congestion - look like a new fault of a node every
        # node routes through again, and the next trial counted the loop's reroute of it as a false action)
        await fault.remove()
    stop_voting.set()
    if scenario in GRAY:
        await asyncio.gather(voting, return_exceptions=True)
    await nc.close()
    out = summarize(rows)
    # what the loop did while no fault was on (between trials, once the first began): a REROUTE, ISOLATE, ...
    # of a node then is an action on a healthy mesh -- counted apart from the trials' false actions, which
    # look only inside each trial's window (a REINSTATE, the loop undoing its own reroute, is not one)
    between = [(t, e) for t, s, e in rec.events if s == subjects.MAPEK_ACTION and windows and t > windows[0][0]
               and e.action.kind != events_pb2.ACTION_KIND_REINSTATE and not any(a <= t <= b for a, b in windows)]
    out["actions_between_trials"] = len(between)
    out["actions_between_trials_detail"] = [
        f"{events_pb2.ActionKind.Name(e.action.kind)[12:]} {e.action.target_node}: {e.incident_id} "
        f"({e.approved_by})" for t, e in between][:40]
    out["mesh_restarts"] = restarts
    out["startup_actions"] = startup_actions or []
    out["unavoid_sent_before_trials"] = len(cleared)   # includes re-sends on telemetry older than an unavoid
    return out


def summarize(rows):
    def stat(key):
        xs = [r[key] for r in rows if r[key] is not None]
        return {"p50": round(pct(xs, 50), 1), "p99": round(pct(xs, 99), 1), "n": len(xs)} if xs else None
    ok = [r for r in rows if r["recovered"]]
    return {"trials": len(rows), "recovered": len(ok), "healed": sum(1 for r in rows if r["healed"]),
            "healed_without_action": sum(1 for r in rows if r.get("healed_without_action")),
            "detected": sum(1 for r in rows if r["detected"]),
            "flow_after_p50": round(statistics.median([r["flow_after"] for r in rows
                                                       if r["flow_after"] is not None] or [0]), 3),
            "detect_ms": stat("detect_ms"), "plan_ms": stat("plan_ms"),
            "act_ms": stat("act_ms"), "verified_ms": stat("verified_ms"),
            "delivery_ratio_p50": round(statistics.median([r["delivery_ratio"] for r in rows
                                                           if r["delivery_ratio"] is not None] or [0]), 3),
            "false_actions": sum(r["false_actions"] for r in rows),
            "unsettled": sum(1 for r in rows if r.get("unsettled"))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Mesh:
    """The 50-node grid's agents: one mesh host process (``hosts == 1``) or a :class:`MeshCluster` of
    ``hosts`` processes (contiguous row blocks, each its own bus identity and key directory), a
    50 DATA/s flow from the first node to the last. ``cpu()`` = CPU seconds of every host process."""

    def __init__(self, stack: Stack, topo, nodes: int, hosts: int, keys: bool, workdir: pathlib.Path,
                 host_args: list[str] | None = None, dst: str = "") -> None:
        self.stack, self.topo, self.n, self.hosts, self.keys, self.workdir = stack, topo, nodes, hosts, keys, workdir
        self.host_args = list(host_args or [])
        self.dst = dst or f"n{nodes - 1}"     # the flow's destination (from n0)
        self.proc: subprocess.Popen | None = None
        self.cluster = None
        self.env = stack.mesh_host_env("mesh", topo.nodes) if hosts == 1 else None

    def start(self) -> list[str]:
        kv = ["--keyvault", self.stack.grpc_addr("keyvault")] if self.keys else []
        if self.hosts == 1:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", self.stack.url, "--topology",
                 f"grid:{self.n}", "--traffic", f"n0:{self.dst}", "--rate", "50", *kv, *self.host_args],
                cwd=repo_root(), env=self.env, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL,
                start_new_session=True)
            assert self.proc.stdout is not None
            return json.loads(self.proc.stdout.readline())["nodes"]
        from x0tta6bl4.mesh.cluster import MeshCluster
        env = {k: v for k, v in self.stack.base_env().items() if not k.startswith("X0TTA6BL4_NATS_")}
        env["X0TTA6BL4_DATA_DIR"] = str(self.stack.data_dir)
        self.cluster = MeshCluster(self.stack.url, f"grid:{self.n}", hosts=self.hosts,
                                   keyvault=self.stack.grpc_addr("keyvault") if self.keys else "", name="mesh",
                                   env=env, workdir=self.workdir, traffic=[f"n0:{self.dst}"], rate=50,
                                   host_env=self.stack.add_mesh_host, host_args=self.host_args)
        self.cluster.start(120)
        return list(self.topo.nodes)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else [p.pid for p in self.cluster.procs] if self.cluster else []

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def restart(self) -> None:
        self.stop()
        self.start()


def one_pass(a, keys: bool) -> dict:
    """One stack, the mesh host(s), ``a.trials`` trials; the summary with the hosts' CPU and the load."""
    with tempfile.TemporaryDirectory(prefix="x0-mttr-") as d:
        env_extra = {"X0TTA6BL4_LOG_LEVEL": "WARNING"}
        if a.scenario in GRAY:
            env_extra.update({"X0TTA6BL4_WINDOW_S": "1", "X0TTA6BL4_STANDARD_VOTE_S": "60",
                              "X0TTA6BL4_EMERGENCY_VOTE_S": "60"})
        stack = Stack(pathlib.Path(d), env=env_extra, secure=not a.open_bus)
        mesh = None
        try:
            stack.start()
            # every mesh host speaks as its own identity, for exactly its nodes
            from x0tta6bl4.mesh.topology import parse_spec
            topo = parse_spec(f"grid:{a.nodes}")
            host_args = ([f"--hello-interval={a.hello_interval:g}"] if a.hello_interval else []) + (
                [f"--telemetry-interval={a.telemetry_interval:g}"] if a.telemetry_interval else [])
            if a.flow_dst and a.flow_dst not in topo.nodes:
                raise SystemExit(f"bench_mttr: --flow-dst {a.flow_dst!r} is not a node of grid:{a.nodes}")
            mesh = Mesh(stack, topo, a.nodes, a.hosts, keys, pathlib.Path(d) / "mesh", host_args, a.flow_dst)
            box: dict = {"mesh": mesh}
            nodes = mesh.start()
            box["cpu0"] = (time.monotonic(), mesh.cpu())

            def restart_mesh():
                mesh.restart()
                box["cpu0"] = (time.monotonic(), mesh.cpu())

            load0 = os.getloadavg()[0]
            out = asyncio.run(run(stack, nodes, a.trials, a.seed, restart_mesh, a.scenario,
                                  [v for v in a.victims.split(",") if v], box,
                                  {n: list(topo.neighbours(n)) for n in topo.nodes}, a.loss_pct, a.flap_period,
                                  a.flow_dst))
            t1, (t0, c0) = time.monotonic(), box["cpu0"]
            used = mesh.cpu() - c0
            out["host_cpu_ms_per_node_s"] = round(1000 * used / (t1 - t0) / a.nodes, 2)
            out["host_cpu_pct"] = round(100 * used / (t1 - t0), 1)
            out["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            out["keys"] = keys
            out["hosts"] = a.hosts
        finally:
            if mesh is not None:
                mesh.stop()
            stack.stop()
    return out


def report(a, out: dict) -> str:
    v = out["verified_ms"] or {}
    what = SCENARIOS[a.scenario] + (f" ({a.loss_pct:g} % loss)" if a.scenario == "loss" else
                                    f" (links down/up every {a.flap_period:g} s)" if a.scenario == "flap" else "")
    target = "p50 < 2000, p99 < 3000" if a.scenario == "kill" else "p50 < 3000"
    timers = ", ".join(x for x in (f"HELLO every {a.hello_interval:g} s" if a.hello_interval else "",
                                    f"reports every {a.telemetry_interval:g} s" if a.telemetry_interval else "") if x)
    return (f"mttr [{a.scenario}]: {out['healed']}/{out['trials']} {what} on a {a.nodes}-node grid "
            f"{'(' + timers + ') ' if timers else ''}"
            f"(verified recovered {out['recovered']}, healed without an action {out['healed_without_action']}, "
            f"detected {out['detected']}; healed = verified and the flow delivers >= {HEALED_DELIVERY:.0%} "
            f"over {AFTER_S:g} s after, flow after p50 {out['flow_after_p50']}), "
            f"{'OPEN bus (comparison)' if a.open_bus else 'secured bus (TLS, nkeys, permissions)'}, "
            f"{'signed HELLOs + PQC links' if out['keys'] else 'mesh keys OFF (unsigned HELLOs, comparison)'}; "
            f"kill->detect p50 {out['detect_ms']['p50'] if out['detect_ms'] else '-'} ms, "
            f"->plan p50 {out['plan_ms']['p50'] if out['plan_ms'] else '-'} ms, "
            f"->acted p50 {out['act_ms']['p50'] if out['act_ms'] else '-'} ms, "
            f"->verified p50 {v.get('p50')} ms / p99 {v.get('p99')} ms (target {target}); "
            f"delivery during incident p50 {out['delivery_ratio_p50']}; false actions {out['false_actions']} "
            f"(between trials, no fault on: {out['actions_between_trials']}); "
            f"mesh host CPU ({out['hosts']} process{'es' if out['hosts'] > 1 else ''}) {out['host_cpu_pct']} % "
            f"of a core = {out['host_cpu_ms_per_node_s']} ms/s per node; "
            f"mesh restarts {out['mesh_restarts']}, trials whose mesh never settled {out['unsettled']}; "
            f"loop actions while the mesh started {len(out['startup_actions'])}; "
            f"load average {out['loadavg_1m'][0]} -> {out['loadavg_1m'][1]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default="")
    ap.add_argument("--victims", default="", help="comma-separated nodes to kill in turn (default: a random "
                                                  "relay of the active path)")
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="kill",
                    help="the fault on a relay of the active path: kill (it crashes), degrade (its links 150 ms "
                         "slower), loss (random loss both ways, --loss-pct), flap (its links down and up every "
                         "--flap-period s), congestion (100 ms queueing delay + 5 %% tail drops); see Fault. "
                         "Medium-confidence findings go to a DAO vote that scripted operators approve at once")
    ap.add_argument("--hosts", type=int, default=2,
                    help="mesh host processes the grid is spread over (mesh.cluster; 1 = one mesh host)")
    ap.add_argument("--hello-interval", type=float, default=0.0,
                    help="the agents' HELLO period in s (default: the mesh host's, 0.2; a large mesh on few cores "
                         "needs a longer one)")
    ap.add_argument("--telemetry-interval", type=float, default=0.0,
                    help="how often each agent reports, in s (default: the mesh host's, 0.25)")
    ap.add_argument("--flow-dst", default="", help="the DATA flow's destination (from n0; default the grid's last "
                    "node). Routes live at most 16 hops (the packets' TTL): on a grid over ~16x16 pick a nearer one")
    ap.add_argument("--loss-pct", type=float, default=30.0, help="loss scenario: %% of datagrams dropped")
    ap.add_argument("--flap-period", type=float, default=1.0, help="flap scenario: seconds between link changes")
    ap.add_argument("--open-bus", action="store_true",
                    help="a comparison only: no TLS, no authentication, no permissions (never how it runs)")
    keys = ap.add_mutually_exclusive_group()
    keys.add_argument("--keys", action="store_true", help="the default, kept for scripts: mesh keys on")
    keys.add_argument("--no-keys", action="store_true",
                      help="only the comparison: unsigned HELLOs, plaintext DATA (never how it runs)")
    ap.add_argument("--no-compare", action="store_true", help="skip the keys-off comparison pass")
    a = ap.parse_args(argv)
    if not 0 < a.loss_pct <= 100:
        ap.error(f"--loss-pct must be in (0, 100], got {a.loss_pct:g}")
    if a.flap_period <= 0:
        ap.error(f"--flap-period must be positive, got {a.flap_period:g}")
    if a.hello_interval < 0 or a.telemetry_interval < 0:
        ap.error("--hello-interval and --telemetry-interval must be positive (or 0: the mesh host's default)")
    if a.nodes < 4 or a.trials < 1 or not 1 <= a.hosts <= a.nodes:
        ap.error("--nodes must be at least 4, --trials at least 1 and --hosts in 1..nodes")
    passes = [False] if a.no_keys else [True] if a.no_compare else [True, False]
    results = []
    for keys_on in passes:
        out = one_pass(a, keys_on)
        results.append(out)
        print(report(a, out), flush=True)
    main_out = results[0]
    v = main_out["verified_ms"] or {}
    if len(results) == 2:
        on, off = (r["verified_ms"] or {} for r in results)
        print(f"mesh keys on vs off, same session: ->verified p50 {on.get('p50')} vs {off.get('p50')} ms, "
              f"p99 {on.get('p99')} vs {off.get('p99')} ms; healed {results[0]['recovered']}/{results[0]['trials']} "
              f"vs {results[1]['recovered']}/{results[1]['trials']} (flow >= {HEALED_DELIVERY:.0%} after: "
              f"{results[0]['healed']} vs {results[1]['healed']}); mesh host CPU per node "
              f"{results[0]['host_cpu_ms_per_node_s']} vs {results[1]['host_cpu_ms_per_node_s']} ms/s")
    print("baselines: the spec's own MTTR target 180000 ms; Kubernetes evicts pods from a lost node after ~300000 ms "
          "(default toleration); ratio p50 vs spec target: "
          f"{(v.get('p50') or 0) / 180000:.4f}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results[0] if len(results) == 1 else
                                                   {"keys_on": results[0], "keys_off": results[1]}, indent=1))
    return main_out


if __name__ == "__main__":
    main()
