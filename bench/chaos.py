"""make chaos: a soak of mixed faults on a real mesh, its invariants checked and printed (issue #21).

The embedded stack, secured as in production (TLS, nkeys, the permission table), the six services as
separate processes, a grid of real UDP node agents with mesh keys (one mesh host process) and a DATA flow
from the first node to the last; operators who approve every proposal. Then, until the time is up, one
fault after another on a random relay of the flow's current path, chosen at random among

* kill (the agent crashes), loss (30 % both ways), flap (its links down/up every second) and congestion
  (100 ms queueing delay, 5 % drops) -- the faults of ``bench/bench_mttr.py`` (its ``Fault``),

each held until the loop verified a repair on the victim or ``--hold`` seconds passed, then removed (the
victim healed; the loop reinstates it after its probation, as in production) and the mesh let settle: the
next fault waits, up to ``--probation-wait`` (30) s, until the loop has reinstated it, so faults do not pile
up on a small grid.
Between two faults, once each: the NATS server is restarted (a third into the run) and one service
process gets a ``kill -9`` and is started again (two thirds in). At the end it checks and prints:

* every incident the loop acted on was resolved (a Verification) or escalated (an Escalation);
* no false action: every action targets the victim of a fault active at the time (or removed less than
  ``FALSE_GRACE_S`` before); reinstatements of earlier victims are not actions against a node;
* no audit event lost: every service's hash chain verifies against the trust bundle, without gaps;
* no dead letter unexplained: every parked message names its reason;
* missed repairs (faults neither verified repaired nor healed without an action, the flow delivering
  >= 95 % again) and MTTR (fault -> verified repair, p50 / p99).

    python bench/chaos.py [--minutes 30] [--nodes 16] [--hold 25] [--seed 7] [--json out.json]

Exit status 0 when every invariant holds. Figures measured on a busy machine are indicative only.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import random
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_mttr as mt
from nats import errors as nats_errors

from x0tta6bl4.audit.chain import trusted_keys, verify_chains
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.rpc.svid import mint as mint_svid
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.v1 import events_pb2

FAULTS = ("kill", "loss", "flap", "congestion")
FALSE_GRACE_S = 15.0     # an action on a victim this long after its fault was removed is still about it
SETTLE_S = 60.0
PROBATION_WAIT_S = 30.0  # the next fault waits (up to this) until the loop has reinstated the earlier victims


def why_not(evs, victim: str) -> str:
    """What the loop did about a victim whose repair was not verified: its findings, plans and escalations."""
    seen: list[str] = []
    for _t, s, e in evs:
        if s == subjects.MAPEK_ANOMALY and e.root_cause == victim:
            item = f"anomaly {e.fault_type}@{e.confidence:.2f}"
        elif s == subjects.MAPEK_PLAN and (e.root_cause == victim or e.action.target_node == victim):
            item = (f"plan {events_pb2.DecisionKind.Name(e.decision).removeprefix('DECISION_KIND_').lower()} "
                    f"{events_pb2.ActionKind.Name(e.action.kind).removeprefix('ACTION_KIND_').lower()}"
                    + (f" ({e.escalation[:80]})" if e.escalation else ""))
        elif s == subjects.MAPEK_ESCALATION and (e.action.target_node == victim or e.incident_id.startswith(
                victim + ".")):
            item = f"escalation {e.reason}: {e.detail[:100]}"
        elif s == subjects.MAPEK_VERIFIED and e.action.target_node == victim:
            item = (f"verification {'recovered' if e.recovered else 'failed'}"
                    + (f" ({', '.join(e.checks_failed)[:100]})" if e.checks_failed else ""))
        else:
            continue
        if not seen or seen[-1] != item:
            seen.append(item)
    return "; ".join(seen[:12]) or "no finding or plan about it"


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q / 100 * len(xs)))], 1) if xs else None


class Soak:
    def __init__(self, stack: Stack, mesh: mt.Mesh, nodes: list[str], neighbours: dict[str, list[str]],
                 a: argparse.Namespace) -> None:
        self.stack, self.mesh, self.nodes, self.neighbours, self.a = stack, mesh, nodes, neighbours, a
        self.faults: list[dict] = []
        self.disruptions: list[dict] = []
        self.unsettled = 0
        self.bus_errors = 0
        self.not_injected: list[str] = []

    # ------------------------------------------------------------------ disruptions (between faults)
    def restart_nats(self) -> None:
        assert self.stack.nats is not None
        self.stack.nats.restart()

    def kill_service(self, rng: random.Random) -> str:
        sp = rng.choice([p for p in self.stack.procs if p.name != "keyvault"])
        name, index = sp.name, sp.index
        self.stack.stop_service(sp, kill=True)       # SIGKILL of its process group
        self.stack.start_service(name, index)
        self.stack.wait_ready(60)
        return f"{name}-{index}"

    @staticmethod
    async def _retrying(what, *, for_s: float = 15.0) -> BaseException | None:
        """``what()`` until it succeeds or ``for_s`` passed; the last error, or None. A mesh host has no
        responder for a moment while its connection is re-established (after the NATS restart) or while the
        mesh is restarted: a command then fails with no responders or a timeout and is sent again."""
        deadline = time.monotonic() + for_s
        while True:
            try:
                await what()
                return None
            except (TimeoutError, nats_errors.NoRespondersError, nats_errors.TimeoutError) as e:
                if time.monotonic() >= deadline:
                    return e
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ the soak
    async def run(self) -> dict:
        a, nodes = self.a, self.nodes
        rng = random.Random(a.seed)
        async def quiet(e: Exception) -> None:    # the NATS restart: the client reconnects by itself
            self.bus_errors += 1

        nc = await self.stack.connect(name="chaos", error_cb=quiet)
        js = nc.jetstream()
        rec = mt.Recorder()
        await nc.subscribe(subjects.MAPEK_ALL, cb=rec.on_msg)
        await nc.subscribe(subjects.MESH_EVENT_ALL, cb=rec.on_msg)
        assert self.stack.secrets is not None
        voters = mt.Voters(self.stack.grpc_addr("governance"), admin_metadata(directory=self.stack.data_dir),
                           svid=mint_svid(self.stack.secrets.root, "operator", "chaos"))
        await voters.register()
        stop = asyncio.Event()
        voting = asyncio.create_task(voters.approve_all(stop))
        src, dst = nodes[0], nodes[-1]
        t_start = time.monotonic()
        end = t_start + a.minutes * 60
        plan = [(1 / 3, "nats_restart"), (2 / 3, "service_kill")]
        victims: set[str] = set()
        while time.monotonic() < end:
            due = [d for d in plan if time.monotonic() >= t_start + d[0] * a.minutes * 60]
            for d in due:
                plan.remove(d)
                t = time.time_ns()
                what = (await asyncio.to_thread(self.restart_nats) or "nats-server") if d[1] == "nats_restart" \
                    else await asyncio.to_thread(self.kill_service, rng)
                self.disruptions.append({"kind": d[1], "what": what, "at_ns": t,
                                         "took_s": round((time.time_ns() - t) / 1e9, 2)})
                print(json.dumps({"disruption": self.disruptions[-1]}), flush=True)
            try:
                tel = await mt.settle(js, nodes, src, timeout=SETTLE_S, nc=nc, keep=victims,
                                      probation_wait=a.probation_wait)
            except TimeoutError as e:
                self.unsettled += 1
                print(json.dumps({"unsettled": str(e)}), flush=True)
                await asyncio.to_thread(self.mesh.restart)
                continue
            p = mt.path(tel, src, dst)
            if not p or len(p) < 3:
                await asyncio.sleep(0.5)
                continue
            victim, kind = rng.choice(p[1:-1]), rng.choice(FAULTS)
            victims.add(victim)
            fault = mt.Fault(nc, kind, victim, self.neighbours.get(victim, []), loss_pct=30.0)
            t_on = time.time_ns()
            err = await self._retrying(fault.inject)
            if err is not None:   # its host did not answer: no fault on the mesh; heal what may have been set
                self.not_injected.append(f"{kind} {victim}: {type(err).__name__}")
                print(json.dumps({"not_injected": self.not_injected[-1]}), flush=True)
                await self._retrying(fault.remove)
                continue
            verified = None
            deadline = time.monotonic() + a.hold
            while time.monotonic() < deadline and verified is None:
                await asyncio.sleep(0.05)
                verified = next((t for t, s, e in rec.since(t_on) if s == subjects.MAPEK_VERIFIED
                                 and e.action.target_node == victim and e.recovered), None)
            flow_after = await mt.flow_delivery(js, src, mt.AFTER_S)
            err = await self._retrying(fault.remove)
            if err is not None:
                raise RuntimeError(f"{kind} on {victim} could not be removed: its host does not answer ({err!r})")
            t_off = time.time_ns()     # the loop reinstates the victim after its probation (as in production)
            acted = any(s == subjects.MAPEK_ACTION and e.action.target_node == victim
                        for t, s, e in rec.since(t_on))
            detected = any((s.startswith("mesh.event.") and e.kind == "neighbour_lost" and e.peer == victim)
                           or (s == subjects.MAPEK_ANOMALY and e.root_cause == victim) for t, s, e in rec.since(t_on))
            ok_flow = flow_after is not None and flow_after >= mt.HEALED_DELIVERY
            row = {"why": why_not(rec.since(t_on), victim) if not verified else "",
                   "kind": kind, "victim": victim, "on_ns": t_on, "off_ns": t_off,
                   "verified_s": round((verified - t_on) / 1e9, 3) if verified else None,
                   "acted": acted, "detected": detected, "flow_after": flow_after,
                   "healed": (bool(verified) and ok_flow) or (kind != "kill" and detected and not acted and ok_flow)}
            self.faults.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_ns")}), flush=True)
        # let the last verifications and escalations arrive
        await asyncio.sleep(a.grace)
        stop.set()
        await asyncio.gather(voting, return_exceptions=True)
        out = await self.invariants(js, rec)
        await nc.close()
        return out

    async def invariants(self, js, rec: mt.Recorder) -> dict:
        evs = rec.events
        plans = [e for t, s, e in evs if s == subjects.MAPEK_PLAN and e.decision != events_pb2.DECISION_KIND_OBSERVE
                 and e.action.kind != events_pb2.ACTION_KIND_UNSPECIFIED]
        done = {e.incident_id for t, s, e in evs if s in (subjects.MAPEK_VERIFIED, subjects.MAPEK_ESCALATION)}
        acted = {e.incident_id for t, s, e in evs if s == subjects.MAPEK_ACTION}
        auto = {p.incident_id for p in plans if p.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE}
        # a plan put to a vote is in the operators' hands (nobody votes in the soak): reported, not unresolved;
        # once a vote passed and the action ran, its verification is owed like any other
        voted = sorted({p.incident_id for p in plans} - auto - acted - done)
        unresolved = sorted((auto | acted) - done)
        false_actions = []
        first_fault = min((f["on_ns"] for f in self.faults), default=None)
        for t, s, e in evs:
            if s != subjects.MAPEK_ACTION or e.action.kind == events_pb2.ACTION_KIND_REINSTATE:
                continue
            if not any(f["victim"] == e.action.target_node and f["on_ns"] <= t <= f["off_ns"] + FALSE_GRACE_S * 1e9
                       for f in self.faults):
                when = "before the first fault" if first_fault is None or t < first_fault else \
                    "during: " + ", ".join(f"{f['kind']} {f['victim']}" for f in self.faults
                                           if f["on_ns"] <= t <= f["off_ns"]) if any(
                        f["on_ns"] <= t <= f["off_ns"] for f in self.faults) else "between faults"
                false_actions.append(f"{events_pb2.ActionKind.Name(e.action.kind)} {e.action.target_node} "
                                     f"({e.incident_id}, {when})")
        audit = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, subjects.AUDIT_ALL)]
        assert self.stack.secrets is not None
        trail = verify_chains(audit, trusted_keys(self.stack.secrets.trust()))
        dead = [events_pb2.DeadLetter.FromString(m.data) for m in await read_all(js, subjects.DEAD_LETTER_ALL)]
        unexplained = [f"{d.consumer} {d.original_subject}" for d in dead if not d.reason.strip()]
        mttr = [f["verified_s"] for f in self.faults if f["verified_s"] is not None]
        by_kind = collections.Counter(f["kind"] for f in self.faults)
        healed = collections.Counter(f["kind"] for f in self.faults if f["healed"])
        return {
            "faults": len(self.faults), "by_kind": dict(by_kind), "healed_by_kind": dict(healed),
            "missed_repairs": [f"{f['kind']} {f['victim']}" for f in self.faults if not f["healed"]],
            "mttr_s": {"p50": pct(mttr, 50), "p99": pct(mttr, 99), "n": len(mttr)},
            "incidents_acted_on": len({p.incident_id for p in plans}), "unresolved_incidents": unresolved,
            "put_to_vote": voted,
            "false_actions": false_actions,
            "audit": {"events": trail.events, "chains": trail.chains, "ok": trail.ok,
                      "problems": [str(p) for p in trail.problems][:10]},
            "dead_letters": len(dead), "dead_letter_reasons": dict(collections.Counter(d.reason[:60] for d in dead)),
            "unexplained_dead_letters": unexplained,
            "disruptions": [{k: v for k, v in d.items() if k != "at_ns"} for d in self.disruptions],
            "mesh_restarts_unsettled": self.unsettled, "bus_errors_seen": self.bus_errors,
            "not_injected": self.not_injected,
        }


def verdict(out: dict) -> dict[str, bool]:
    return {"every incident resolved or escalated": not out["unresolved_incidents"],
            "no false action": not out["false_actions"],
            "no audit event lost": bool(out["audit"]["ok"]),
            "no dead letter unexplained": not out["unexplained_dead_letters"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected (default 30)")
    ap.add_argument("--nodes", type=int, default=16, help="grid size (default 16)")
    ap.add_argument("--hold", type=float, default=25.0, help="longest a fault is held (s)")
    ap.add_argument("--grace", type=float, default=10.0, help="wait for the last verifications (s)")
    ap.add_argument("--probation-wait", type=float, default=PROBATION_WAIT_S,
                    help="longest the next fault waits for the loop to reinstate the earlier victims (s; 0: not)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default="", help="write the result here")
    ap.add_argument("--data-dir", default="", help="keep the stack's files and logs here (default: a temporary "
                    "directory, removed)")
    a = ap.parse_args(argv)
    if a.minutes <= 0:
        ap.error(f"--minutes must be positive, got {a.minutes:g}")
    if a.nodes < 4:
        ap.error(f"--nodes must be at least 4 (a flow with a relay), got {a.nodes}")
    if a.hold <= 0 or a.grace < 0:
        ap.error("--hold must be positive and --grace not negative")
    from x0tta6bl4.mesh.topology import parse_spec
    with tempfile.TemporaryDirectory(prefix="x0-chaos-") as tmp:
        d = a.data_dir or tmp
        pathlib.Path(d).mkdir(parents=True, exist_ok=True)
        stack = Stack(pathlib.Path(d), env={"X0TTA6BL4_LOG_LEVEL": "WARNING", "X0TTA6BL4_WINDOW_S": "1",
                                            "X0TTA6BL4_STANDARD_VOTE_S": "60", "X0TTA6BL4_EMERGENCY_VOTE_S": "60"})
        mesh = None
        try:
            stack.start()
            topo = parse_spec(f"grid:{a.nodes}")
            mesh = mt.Mesh(stack, topo, a.nodes, 1, True, pathlib.Path(d) / "mesh")
            nodes = mesh.start()
            soak = Soak(stack, mesh, nodes, {n: list(topo.neighbours(n)) for n in topo.nodes}, a)
            out = asyncio.run(soak.run())
        finally:
            if mesh is not None:
                mesh.stop()
            stack.stop()
    out["invariants"] = verdict(out)
    print(json.dumps(out, indent=1))
    print("chaos: " + "; ".join(f"{k}: {'OK' if v else 'VIOLATED'}" for k, v in out["invariants"].items())
          + f"; {out['faults']} faults {out['by_kind']}, healed {out['healed_by_kind']}, missed repairs "
          f"{len(out['missed_repairs'])}, false actions {len(out['false_actions'])}, MTTR p50 "
          f"{out['mttr_s']['p50']} s p99 {out['mttr_s']['p99']} s (indicative on a busy machine)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if all(out["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
