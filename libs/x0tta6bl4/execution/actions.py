"""What each action does, as a list of steps (no I/O), and how it is undone.

The executor service turns steps into NATS requests to node agents and gRPC
calls to keyvault; this module decides which steps, to whom, in what order.

Undo (:func:`undo_steps`, the executor's rollback of an action that made delivery worse): a reroute or an
isolation is undone by un-avoiding the node everywhere, a reinstatement by avoiding it again, a topology
update by the opposite link state at both ends, a configuration change by each commanded node restoring the
values it had before; restarts, key rotations and deployments cannot be undone here (None). What
``topology_update`` and ``config_change`` do: :mod:`x0tta6bl4.execution.changes`. An isolation revokes the
node's identity at once only for a security fault (``compromised``, ``key_compromise``, or no fault named):
those keys stay revoked whatever happens. For any other fault the revocation waits until the isolation is
verified (:func:`after_verified_steps`), so rolling such an isolation back re-admits the node with its keys
(keyvault revocations are final).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from x0tta6bl4.execution import changes
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2
C = mesh_pb2.MeshCommand


@dataclass(frozen=True)
class Step:
    name: str                    # e.g. "avoid n3 at n2"
    kind: str                    # "mesh" (command to an agent) or "keyvault"
    node: str = ""               # agent that receives a mesh command
    command: mesh_pb2.MeshCommand.Kind = C.KIND_UNSPECIFIED
    peer: str = ""
    op: str = ""                 # keyvault operation: revoke, rotate
    params: dict = field(default_factory=dict, hash=False)


class UnsupportedAction(ValueError):
    pass


SECURITY_FAULTS = frozenset({"compromised", "key_compromise"})


def revokes_at_once(fault_type: str) -> bool:
    """An isolation for this fault revokes the node's identity before anything else (a security fault)."""
    return not fault_type or fault_type in SECURITY_FAULTS


def plan_steps(action: events_pb2.ActionSpec, live_nodes: list[str], fault_type: str = "") -> list[list[Step]]:
    """Steps grouped in phases: steps within a phase run concurrently, phases in order."""
    target = action.target_node
    others = [n for n in live_nodes if n != target]
    if action.kind == K.ACTION_KIND_REROUTE:
        if not target:
            raise UnsupportedAction("reroute needs a target_node")
        return [[Step(f"avoid {target} at {n}", "mesh", n, C.KIND_AVOID_NODE, target) for n in others]]
    if action.kind == K.ACTION_KIND_ISOLATE:
        if not target:
            raise UnsupportedAction("isolate needs a target_node")
        avoid = [Step(f"avoid {target} at {n}", "mesh", n, C.KIND_AVOID_NODE, target) for n in others]
        if not revokes_at_once(fault_type):
            return [avoid]          # the revocation follows the verified isolation (after_verified_steps)
        return [[Step(f"revoke identity of {target}", "keyvault", op="revoke", node=target)], avoid]
    if action.kind == K.ACTION_KIND_ROTATE_KEYS:
        scope = [target] if target and target != "*" else list(live_nodes)
        return [[Step("rotate keys of " + (target or "all nodes"), "keyvault", op="rotate",
                      params={"nodes": ",".join(scope)})],
                [Step(f"reload keys at {n}", "mesh", n, C.KIND_RELOAD_KEYS) for n in scope]]
    if action.kind == K.ACTION_KIND_RESTART:
        if not target:
            raise UnsupportedAction("restart needs a target_node")
        return [[Step(f"restart agent {target}", "mesh", target, C.KIND_RESTART)],
                [Step(f"unavoid {target} at {n}", "mesh", n, C.KIND_UNAVOID_NODE, target) for n in others]]
    if action.kind == K.ACTION_KIND_REINSTATE:
        if not target:
            raise UnsupportedAction("reinstate needs a target_node")
        return [[Step(f"unavoid {target} at {n}", "mesh", n, C.KIND_UNAVOID_NODE, target) for n in others]]
    if action.kind == K.ACTION_KIND_CONFIG_CHANGE:
        try:
            values = changes.config_values(action.params)
        except changes.ChangeError as e:
            raise UnsupportedAction(str(e)) from None
        if not values:
            return []            # nothing to change: the executor only verifies the mesh
        params = {k: f"{v:g}" for k, v in sorted(values.items())}
        return [[Step(f"set {' '.join(f'{k}={v}' for k, v in params.items())} at {n}", "mesh", n,
                      C.KIND_SET_CONFIG, params=params) for n in live_nodes]]
    if action.kind == K.ACTION_KIND_TOPOLOGY_UPDATE:
        if changes.is_route_refresh(action.params):
            return [[Step(f"refresh routes at {n}", "mesh", n, C.KIND_FLUSH_ROUTES) for n in live_nodes]]
        try:
            a, b, state = changes.topology_change(action.params)
        except changes.ChangeError as e:
            raise UnsupportedAction(str(e)) from None
        return [_link_steps(a, b, state)]
    if action.kind == K.ACTION_KIND_DEPLOY:
        return [[Step("blue-green deploy", "deploy", params=dict(action.params))]]
    raise UnsupportedAction(f"unknown action kind {action.kind}")


def after_verified_steps(action: events_pb2.ActionSpec, fault_type: str = "") -> list[list[Step]]:
    """What follows a verified action: the revocation of an isolation for a fault that is not a security one."""
    if action.kind == K.ACTION_KIND_ISOLATE and action.target_node and not revokes_at_once(fault_type):
        return [[Step(f"revoke identity of {action.target_node}", "keyvault", op="revoke", node=action.target_node)]]
    return []


def undo_steps(action: events_pb2.ActionSpec, nodes: list[str]) -> list[list[Step]] | None:
    """The steps that undo ``action`` at ``nodes`` (the nodes it commanded), or None: it cannot be undone."""
    target = action.target_node
    others = [n for n in nodes if n != target]
    if action.kind in (K.ACTION_KIND_REROUTE, K.ACTION_KIND_ISOLATE) and target:
        return [[Step(f"unavoid {target} at {n}", "mesh", n, C.KIND_UNAVOID_NODE, target) for n in others]]
    if action.kind == K.ACTION_KIND_REINSTATE and target:
        return [[Step(f"avoid {target} at {n}", "mesh", n, C.KIND_AVOID_NODE, target) for n in others]]
    if action.kind == K.ACTION_KIND_TOPOLOGY_UPDATE and not changes.is_route_refresh(action.params):
        a, b, state = changes.topology_change(action.params)
        return [_link_steps(a, b, changes.UP if state == changes.DOWN else changes.DOWN)]
    if action.kind == K.ACTION_KIND_CONFIG_CHANGE and nodes:
        return [[Step(f"restore previous config at {n}", "mesh", n, C.KIND_SET_CONFIG,
                      params={changes.RESTORE: changes.PREVIOUS}) for n in nodes]]
    return None


def _link_steps(a: str, b: str, state: str) -> list[Step]:
    """Both ends of link a,b set to ``state`` (one phase)."""
    return [Step(f"link {x}-{y} {state} at {x}", "mesh", x, C.KIND_SET_LINK, y, params={changes.STATE: state})
            for x, y in ((a, b), (b, a))]
