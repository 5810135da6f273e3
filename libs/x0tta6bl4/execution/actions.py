"""What each action does, as a list of steps (no I/O).

The executor service turns steps into NATS requests to node agents and gRPC
calls to keyvault; this module decides which steps, to whom, in what order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


def plan_steps(action: events_pb2.ActionSpec, live_nodes: list[str]) -> list[list[Step]]:
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
        return [[Step(f"revoke identity of {target}", "keyvault", op="revoke", node=target)],
                [Step(f"avoid {target} at {n}", "mesh", n, C.KIND_AVOID_NODE, target) for n in others]]
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
        nodes = [target] if target else list(live_nodes)
        return [[Step(f"apply config at {n}", "mesh", n, C.KIND_HEAL, params=dict(action.params)) for n in nodes]]
    if action.kind == K.ACTION_KIND_DEPLOY:
        return [[Step("blue-green deploy", "deploy", params=dict(action.params))]]
    raise UnsupportedAction(f"unknown action kind {action.kind}")
