"""Blue-green deployment of a new node-agent version: the state machine (no I/O).

Phases, in order::

    discover -> start green -> health -> stand down blue -> activate green -> verify -> retire blue -> done

``discover`` finds blue (the host now serving the nodes); when blue already runs the requested version the
deployment is a no-op (an idempotent re-run). ``start green`` starts the green set in standby (agents run
dark and converge, nothing is published); ``health`` waits until every green instance answers ``/health``;
the switch stands blue down (kept warm for rollback) and activates green; ``verify`` checks that every node
reports from green with DATA flowing. Any failure rolls back what was done, newest first::

    green stands down -> blue re-activates -> green is stopped -> rolled back

Each phase is reported as a step (name, ok, detail, duration) and the last step names the outcome, so an
ActionResult of a rolled-back deployment is unsuccessful and says "rolled back to blue ...".
A driver (``bluegreen_local.run``) asks :meth:`BlueGreen.next_op` what to do, does it and calls
:meth:`BlueGreen.report`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_FLOW = re.compile(r"^[A-Za-z0-9_-]+:[A-Za-z0-9_-]+$")
_TRUE = ("1", "true", "yes", "on")


class Phase(str, Enum):
    DISCOVER = "discover"
    START_GREEN = "start green"
    HEALTH = "health"
    STAND_DOWN_BLUE = "stand down blue"
    ACTIVATE_GREEN = "activate green"
    VERIFY = "verify"
    RETIRE_BLUE = "retire blue"
    ROLLBACK_GREEN = "rollback: stand down green"
    ROLLBACK_BLUE = "rollback: re-activate blue"
    ROLLBACK_STOP_GREEN = "rollback: stop green"
    DONE = "done"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"


TERMINAL = (Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED)


@dataclass(frozen=True)
class DeploySpec:
    """A DEPLOY action's params. Only ``version`` is required; the rest defaults to what blue runs."""

    version: str
    topology: str = ""               # green's topology spec (default: blue's)
    traffic: tuple[str, ...] = ()    # green's DATA flows SRC:DST (default: blue's)
    probe_node: str = "n0"           # a node whose mesh.cmd subject reaches the hosts
    health_port: int = 8080          # the spec's /health port (the local stack picks another when busy)
    health_timeout_s: float = 10.0
    verify_timeout_s: float = 10.0
    max_loss_pct: float = 5.0        # DATA loss at a traffic source that still verifies
    keep_blue: bool = False          # keep blue in standby after a verified switch (else retire it)
    fail_health: bool = False        # canary aid: green's /health answers 503 (rehearses the rollback)
    image: str = ""                  # Kubernetes only: container image (default x0tta6bl4:<version>)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DeploySpec:
        p = dict(params)
        version = p.get("version", "")
        if not _VERSION.match(version):
            raise ValueError(f"deploy needs params.version (letters, digits, . _ -), got {version!r}")
        traffic = tuple(t.strip() for t in p.get("traffic", "").split(",") if t.strip())
        for t in traffic:
            if not _FLOW.match(t):
                raise ValueError(f"traffic flow {t!r} is not SRC:DST")
        topology = p.get("topology", "")
        probe = p.get("probe_node") or (traffic[0].split(":")[0] if traffic else "n0")
        try:
            spec = cls(version=version, topology=topology, traffic=traffic, probe_node=probe,
                       health_port=int(p.get("health_port", 8080)),
                       health_timeout_s=float(p.get("health_timeout_s", 10.0)),
                       verify_timeout_s=float(p.get("verify_timeout_s", 10.0)),
                       max_loss_pct=float(p.get("max_loss_pct", 5.0)),
                       keep_blue=p.get("keep_blue", "").lower() in _TRUE,
                       fail_health=p.get("fail_health", "").lower() in _TRUE,
                       image=p.get("image", ""))
        except ValueError as e:
            raise ValueError(f"bad deploy params: {e}") from None
        if not 0 <= spec.health_port <= 65535:
            raise ValueError(f"health_port {spec.health_port} out of range")
        if not (0 < spec.health_timeout_s <= 600 and 0 < spec.verify_timeout_s <= 600):
            raise ValueError("health_timeout_s and verify_timeout_s must be in (0, 600]")
        return spec

    @property
    def green_instance(self) -> str:
        """Deterministic, so a re-run finds (and reuses) the green a previous attempt started."""
        return f"mesh-{self.version}"


@dataclass(frozen=True)
class HostInfo:
    """What a mesh host says about itself (host_op=status)."""

    instance: str
    version: str = ""
    active: bool = True
    nodes: tuple[str, ...] = ()
    topology: str = ""
    traffic: tuple[str, ...] = ()
    rate: float = 0.0
    telemetry_interval: float = 0.25
    keys: str = ""
    health_port: int = 0
    pid: int = 0
    bus_identity: str = ""     # its NATS identity on a secured bus (a local green speaks as blue does)

    @classmethod
    def from_status(cls, d: Mapping) -> HostInfo:
        return cls(instance=str(d["instance"]), version=str(d.get("version", "")), active=bool(d.get("active")),
                   nodes=tuple(d.get("nodes") or ()), topology=str(d.get("topology", "")),
                   traffic=tuple(d.get("traffic") or ()), rate=float(d.get("rate") or 0.0),
                   telemetry_interval=float(d.get("telemetry_interval") or 0.25), keys=str(d.get("keys", "")),
                   health_port=int(d.get("health_port") or 0), pid=int(d.get("pid") or 0),
                   bus_identity=str(d.get("bus_identity", "")))


@dataclass(frozen=True)
class Op:
    phase: Phase
    name: str


@dataclass(frozen=True)
class StepRecord:
    name: str
    ok: bool
    detail: str
    duration_ms: float = 0.0


@dataclass
class BlueGreen:
    spec: DeploySpec
    phase: Phase = Phase.DISCOVER
    blue: HostInfo | None = None
    steps: list[StepRecord] = field(default_factory=list)
    reason: str = ""                 # why it rolled back / failed
    note: str = ""                   # e.g. "already at version"
    green_started: bool = False
    blue_down: bool = False
    green_active: bool = False
    rollback_failed: bool = False
    _rollback: list[Phase] = field(default_factory=list)

    # ---- queries ---------------------------------------------------------------------
    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.phase is Phase.DONE

    def next_op(self) -> Op | None:
        if self.terminal:
            return None
        v = self.spec.version
        names = {
            Phase.DISCOVER: "discover blue",
            Phase.START_GREEN: f"start green {v} in standby",
            Phase.HEALTH: f"health of green {v}",
            Phase.STAND_DOWN_BLUE: f"stand down blue {self._blue_name()}",
            Phase.ACTIVATE_GREEN: f"switch traffic to green {v}",
            Phase.VERIFY: f"verify green {v}",
            Phase.RETIRE_BLUE: f"retire blue {self._blue_name()}",
            Phase.ROLLBACK_GREEN: f"rollback: stand down green {v}",
            Phase.ROLLBACK_BLUE: f"rollback: re-activate blue {self._blue_name()}",
            Phase.ROLLBACK_STOP_GREEN: f"rollback: stop green {v}",
        }
        return Op(self.phase, names[self.phase])

    def _blue_name(self) -> str:
        if self.blue is None:
            return "(none)"
        return self.blue.version or self.blue.instance

    def outcome(self) -> StepRecord:
        """The final step: what the deployment left serving."""
        v = self.spec.version
        if self.phase is Phase.DONE:
            if self.note:
                return StepRecord("blue-green outcome", True, self.note)
            kept = "none" if self.blue is None else (
                f"blue {self._blue_name()} kept in standby" if self.spec.keep_blue
                else f"blue {self._blue_name()} retired")
            return StepRecord("blue-green outcome", True, f"green {v} serves; {kept}")
        if self.phase is Phase.ROLLED_BACK:
            who = f"blue {self._blue_name()} serves again" if self.blue is not None else "no blue to restore"
            return StepRecord("blue-green outcome", False, f"rolled back to {who}; green {v} stopped: {self.reason}")
        if self.phase is Phase.FAILED:
            return StepRecord("blue-green outcome", False, f"deployment of {v} failed: {self.reason}")
        return StepRecord("blue-green outcome", False, f"deployment of {v} unfinished in phase {self.phase.value}")

    # ---- transitions ----------------------------------------------------------------
    def report(self, ok: bool, detail: str = "", duration_ms: float = 0.0, blue: HostInfo | None = None) -> Phase:
        """The result of the op :meth:`next_op` returned; returns the new phase."""
        op = self.next_op()
        if op is None:
            raise RuntimeError(f"deployment already {self.phase.value}")
        self.steps.append(StepRecord(op.name, ok, detail, duration_ms))
        ph = op.phase
        if ph is Phase.DISCOVER:
            if not ok:
                self.reason = f"blue not discovered: {detail}"
                self.phase = Phase.FAILED
            elif blue is not None and blue.version == self.spec.version and blue.active:
                self.blue = blue
                self.note = f"already at version {self.spec.version} ({blue.instance}); nothing to do"
                self.phase = Phase.DONE
            else:
                self.blue = blue
                self.phase = Phase.START_GREEN
        elif ph is Phase.START_GREEN:
            self.green_started = True            # even a failed start may have left a process: stop it
            self.phase = Phase.HEALTH if ok else self._fail(f"green did not start: {detail}")
        elif ph is Phase.HEALTH:
            if ok:
                self.phase = Phase.STAND_DOWN_BLUE if self.blue is not None else Phase.ACTIVATE_GREEN
            else:
                self.phase = self._fail(f"health check failed: {detail}")
        elif ph is Phase.STAND_DOWN_BLUE:
            self.blue_down = True                # a partial stand-down is undone by re-activating
            self.phase = Phase.ACTIVATE_GREEN if ok else self._fail(f"blue did not stand down: {detail}")
        elif ph is Phase.ACTIVATE_GREEN:
            self.green_active = True
            self.phase = Phase.VERIFY if ok else self._fail(f"green did not activate: {detail}")
        elif ph is Phase.VERIFY:
            if not ok:
                self.phase = self._fail(f"verification failed: {detail}")
            elif self.blue is not None and not self.spec.keep_blue:
                self.phase = Phase.RETIRE_BLUE
            else:
                self.phase = Phase.DONE
        elif ph is Phase.RETIRE_BLUE:
            if ok:
                self.phase = Phase.DONE
            else:                                # green serves and verified: no rollback, but say so
                self.reason = f"green {self.spec.version} serves, but blue was not retired: {detail}"
                self.phase = Phase.FAILED
        else:                                    # a rollback step
            if not ok:
                self.rollback_failed = True
            self._rollback.pop(0)
            self.phase = self._rollback[0] if self._rollback else (
                Phase.FAILED if self.rollback_failed else Phase.ROLLED_BACK)
            if self.phase is Phase.FAILED:
                self.reason = f"rollback incomplete after: {self.reason}"
        return self.phase

    def abort(self, reason: str) -> Phase:
        """Stop where we are (e.g. the action's timeout) and roll back what was done."""
        if self.terminal or self._rollback:
            return self.phase
        self.phase = self._fail(reason)
        return self.phase

    def _fail(self, reason: str) -> Phase:
        self.reason = reason
        plan = []
        if self.green_active:
            plan.append(Phase.ROLLBACK_GREEN)
        if self.blue_down:
            plan.append(Phase.ROLLBACK_BLUE)
        if self.green_started:
            plan.append(Phase.ROLLBACK_STOP_GREEN)
        self._rollback = plan
        return plan[0] if plan else Phase.FAILED
