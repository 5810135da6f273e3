"""Operator changes to the mesh: what ``topology_update`` and ``config_change`` do (pure, no I/O).

A DAO proposal of either kind that passes is executed like any approved action (signed by governance,
verified by the executor, rolled back when it makes delivery worse). Their parameters are checked when the
proposal is made (:func:`validate`, called by the governance engine), so a proposal that could never run is
refused with an error naming the parameter, not voted on.

``topology_update`` -- take one link of the mesh out of service, or put it back:

    link  = "A,B"        the two nodes at the ends of the link (node names, in either order)
    state = down | up    down: both ends stop sending on the link and drop what arrives on it, so the
                         routing protocol loses the neighbour and routes around the link; up: the link
                         carries traffic again (HELLOs resume, the neighbour and its routes come back)

    Without parameters (the spec's ``dao-vote.py --action topology_update --title ... --duration 300``): a route
    refresh -- every live node flushes its route table and rediscovers its routes over the links as they are
    now (verified by the usual checks; nothing to undo).

    The link must exist in the mesh's topology (the node agents refuse a peer that is not their neighbour).
    ``target_node`` may name one end of the link, nothing else. Verified by the ends' telemetry: after ``down`` neither
    end lists the other as a neighbour, after ``up`` both do (and the usual checks: every node reachable,
    flows deliver). Undone by the opposite state at both ends.

``config_change`` -- set named parameters of the node agents' mesh protocol:

    hello_interval = S   seconds between HELLO beacons (0.05 .. 2.0; default 0.2)
    miss_count     = N   HELLOs missed before a neighbour is declared lost (2 .. 10; default 3)

    At least one of them; any other key is refused. Applied to every live node (``target_node`` empty or
    ``*``): a neighbour is declared lost after ``miss_count`` of *its own* intervals, so nodes with different
    HELLO intervals would lose each other. Verified by every node's telemetry (counters
    ``config.hello_interval_s`` and ``config.miss_count`` report the value in force) plus the usual checks.
    Undone by each node restoring the values it had before (``restore = previous``).

A ``config_change`` proposal without parameters (the default kind of older clients) is accepted and changes
nothing: the executor then only verifies the mesh.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

TOPOLOGY_UPDATE, CONFIG_CHANGE = "topology_update", "config_change"
LINK, STATE = "link", "state"
DOWN, UP = "down", "up"
HELLO_INTERVAL, MISS_COUNT = "hello_interval", "miss_count"
RESTORE, PREVIOUS = "restore", "previous"
# name -> (type, min, max, telemetry counter)
CONFIG_PARAMS: dict[str, tuple[type, float, float, str]] = {
    HELLO_INTERVAL: (float, 0.05, 2.0, "config.hello_interval_s"),
    MISS_COUNT: (int, 2, 10, "config.miss_count"),
}
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChangeError(ValueError):
    """A parameter of a topology_update or config_change that cannot be carried out (str() names it)."""


def parse_link(value: str) -> tuple[str, str]:
    """``"A,B"`` -> ("A", "B"); ChangeError naming what is wrong."""
    ends = [e.strip() for e in str(value).split(",")]
    if len(ends) != 2 or not all(ends):
        raise ChangeError(f"topology_update: link must be two node names 'A,B', got {value!r}")
    for e in ends:
        if not _NODE.match(e):
            raise ChangeError(f"topology_update: link end {e!r} is not a node name (letters, digits, '_' or '-')")
    if ends[0] == ends[1]:
        raise ChangeError(f"topology_update: link {value!r} joins a node to itself")
    return ends[0], ends[1]


def topology_change(params: Mapping[str, str]) -> tuple[str, str, str]:
    """(A, B, state) of a topology_update's parameters; ChangeError naming what is wrong."""
    unknown = sorted(set(params) - {LINK, STATE, "generation"})
    if unknown:
        raise ChangeError(f"topology_update: unknown parameter(s) {', '.join(unknown)} (expected link=A,B and "
                          f"state=down|up)")
    if LINK not in params:
        raise ChangeError("topology_update needs link=A,B (the two nodes at the ends of the link)")
    a, b = parse_link(params[LINK])
    state = str(params.get(STATE, "")).strip().lower()
    if state not in (DOWN, UP):
        raise ChangeError(f"topology_update: state must be down or up, got {params.get(STATE, '')!r}")
    return a, b, state


def config_values(params: Mapping[str, str]) -> dict[str, float]:
    """The parameters of a config_change as numbers (empty: no change); ChangeError naming a bad one."""
    out: dict[str, float] = {}
    for key, raw in params.items():
        if key == "generation":
            continue
        spec = CONFIG_PARAMS.get(key)
        if spec is None:
            settable = ", ".join(f"{k} ({t.__name__} {lo:g}..{hi:g})" for k, (t, lo, hi, _) in CONFIG_PARAMS.items())
            raise ChangeError(f"config_change: unknown parameter {key!r} (settable: {settable})")
        typ, lo, hi, _ = spec
        try:
            value = float(typ(str(raw).strip()))
        except ValueError:
            raise ChangeError(f"config_change: {key} must be {'an integer' if typ is int else 'a number'}, "
                              f"got {raw!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ChangeError(f"config_change: {key} must be between {lo:g} and {hi:g}, got {raw!r}")
        out[key] = value
    return out


def is_route_refresh(params: Mapping[str, str]) -> bool:
    """A topology_update without parameters: every node rediscovers its routes."""
    return not any(k != "generation" for k in params)


def validate(kind: str, target_node: str, params: Mapping[str, str]) -> None:
    """Check a proposal's action of ``kind`` (the governance action kind's value); other kinds pass."""
    if kind == TOPOLOGY_UPDATE:
        if is_route_refresh(params):
            if target_node not in ("", "*"):
                raise ChangeError(f"topology_update: target {target_node!r} without link=A,B and state=down|up "
                                  "(a route refresh is for every node; to route around a node propose reroute)")
            return
        a, b, _ = topology_change(params)
        if target_node and target_node not in (a, b):
            raise ChangeError(f"topology_update: target {target_node!r} is not an end of link {a},{b}")
    elif kind == CONFIG_CHANGE:
        if target_node not in ("", "*"):
            raise ChangeError(f"config_change applies to every node (target must be empty or '*', got "
                              f"{target_node!r}): nodes with different HELLO timing lose each other")
        config_values(params)


# ---- verification (telemetry of the nodes, objects with node_id, reachable, neighbours, counters) ------
def check(kind: str, params: Mapping[str, str], nodes: Iterable[Any]) -> tuple[list[str], list[str]]:
    """(passed, failed): whether the nodes' latest telemetry shows the change in force."""
    now = {t.node_id: t for t in nodes}
    passed: list[str] = []
    failed: list[str] = []
    if kind == TOPOLOGY_UPDATE and not is_route_refresh(params):
        a, b, state = topology_change(params)
        for x, y in ((a, b), (b, a)):
            t = now.get(x)
            if t is None or not t.reachable:
                failed.append(f"link {a},{b}: {x} reports nothing" if t is None else f"link {a},{b}: {x} unreachable")
                continue
            has = y in t.neighbours
            if (state == DOWN) == has:
                failed.append(f"link {a},{b} {state}: {x} {'still lists' if has else 'does not list'} {y} as a "
                              f"neighbour")
        if not failed:
            passed.append(f"link {a},{b} is {state} at both ends")
    elif kind == CONFIG_CHANGE:
        want = config_values(params)
        live = [t for t in now.values() if t.reachable]
        for key, value in sorted(want.items()):
            counter = CONFIG_PARAMS[key][3]
            off = sorted(t.node_id for t in live if abs(float(t.counters.get(counter, math.nan)) - value) > 1e-9
                         or math.isnan(float(t.counters.get(counter, math.nan))))
            if off:
                failed.append(f"{key}={value:g} not in force at {', '.join(off[:10])}"
                              + (f" and {len(off) - 10} more" if len(off) > 10 else ""))
            elif live:
                passed.append(f"{key}={value:g} in force at {len(live)} node(s)")
    return passed, failed
