"""Asking the digital twin what an action does to the mesh."""
from __future__ import annotations

import logging

from x0tta6bl4.mapek.plan import TwinVerdict
from x0tta6bl4.twin.twin import MeshDigitalTwin
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.planner")

CASCADE_THRESHOLD = 0.5   # the spec's predict_cascade_failure(node, threshold=0.5)
REMOVES_NODE = {events_pb2.ACTION_KIND_REROUTE, events_pb2.ACTION_KIND_ISOLATE}


def twin_verdict(adjacency: dict[str, list[str]], kind: int, node: str) -> TwinVerdict:
    """Connectivity kept and cascade predicted if ``node`` is routed around or isolated."""
    if node not in adjacency or len(adjacency) < 3 or kind not in REMOVES_NODE:
        return TwinVerdict()
    twin = MeshDigitalTwin("planner")
    twin.from_neighbours({n: peers for n, peers in adjacency.items()})   # (a Mapping keyed by Hashable)
    try:
        return TwinVerdict(connectivity=twin.connectivity_after_failure([node]),
                           cascade=[str(n) for n in twin.predict_cascade_failure(node, CASCADE_THRESHOLD)])
    except (KeyError, ValueError) as e:
        log.warning("twin could not evaluate %s on %s: %s", kind, node, e)
        return TwinVerdict()
