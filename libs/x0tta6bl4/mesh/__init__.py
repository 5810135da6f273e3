"""x0tta6bl4 mesh data plane.

Layers (pure -> I/O):

* :mod:`.packets`    versioned binary wire format (DATA/RREQ/RREP/RERR/HELLO), strict codec
* :mod:`.neighbours` HELLO bookkeeping, neighbour loss detection, link quality
* :mod:`.routing`    AODV route table and state machine (pure, clock injected)
* :mod:`.core`       MeshCore = neighbours + routing for one node (pure)
* :mod:`.sim`        deterministic in-memory medium with a virtual clock
* :mod:`.agent`      asyncio UDP node agent (counters, telemetry, events, impairments)
* :mod:`.runtime`    many agents in one process on loopback with a topology
* :mod:`.topology`   line/ring/grid/random geometric/scale-free, YAML/TOML files
* :mod:`.faults`     fault language + agent-level injection
* :mod:`.netns`      one network namespace per node, veth links, kernel-level faults
* :mod:`.node`       ``python -m x0tta6bl4.mesh.node`` single-node entry point
"""

from .core import CoreConfig, MeshCore
from .packets import (
    DATA,
    HELLO,
    RERR,
    RREP,
    RREQ,
    HelloBody,
    HelloNeighbour,
    Packet,
    PacketError,
    RerrBody,
    RrepBody,
    RreqBody,
    decode,
    encode,
    signing_bytes,
)
from .routing import AodvConfig, AodvRouter, Event, Output, Send
from .topology import Topology

_LAZY = {"MeshAgent": "agent", "Impairments": "agent", "MeshRuntime": "runtime"}


def __getattr__(name: str):
    # agent/runtime are imported lazily so `python -m x0tta6bl4.mesh.runtime` runs cleanly
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [
    "DATA",
    "HELLO",
    "RERR",
    "RREP",
    "RREQ",
    "AodvConfig",
    "AodvRouter",
    "CoreConfig",
    "Event",
    "HelloBody",
    "HelloNeighbour",
    "Impairments",
    "MeshAgent",
    "MeshCore",
    "MeshRuntime",
    "Output",
    "Packet",
    "PacketError",
    "RerrBody",
    "RrepBody",
    "RreqBody",
    "Send",
    "Topology",
    "decode",
    "encode",
    "signing_bytes",
]  # fmt: skip
