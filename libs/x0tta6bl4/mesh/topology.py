"""Mesh topologies: generators and YAML/TOML descriptions.

Node ids are ``n0`` .. ``n{N-1}``.  A description file looks like::

    # YAML                              # TOML
    nodes: [n0, n1, n2]                 nodes = ["n0", "n1", "n2"]
    links: [[n0, n1], [n1, n2]]         links = [["n0", "n1"], ["n1", "n2"]]

or uses a generator::

    generator: grid        # line | ring | grid | random_geometric | scale_free
    n: 50
    seed: 7
    # grid: rows/cols; random_geometric: radius; scale_free: m
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from .packets import valid_node_id


def node_id(i: int) -> str:
    return f"n{i}"


@dataclass
class Topology:
    nodes: list[str]
    links: set[frozenset[str]] = field(default_factory=set)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self) -> None:
        seen = set(self.nodes)
        if len(seen) != len(self.nodes):
            raise ValueError("duplicate node ids")
        for n in self.nodes:
            if not valid_node_id(n):
                raise ValueError(f"invalid node id {n!r}")
        links = set()
        for link in self.links:
            pair = frozenset(link)
            if len(pair) != 2 or not pair <= seen:
                raise ValueError(f"bad link {tuple(link)!r}")
            links.add(pair)
        self.links = links

    @classmethod
    def from_links(cls, links: Iterable[tuple[str, str]], nodes: Iterable[str] = (), name: str = "custom") -> Topology:
        ns: list[str] = list(dict.fromkeys(list(nodes)))
        ls = set()
        for a, b in links:
            for x in (a, b):
                if x not in ns:
                    ns.append(x)
            ls.add(frozenset((a, b)))
        return cls(ns, ls, name=name)

    def neighbours(self, n: str) -> list[str]:
        return sorted(next(iter(link - {n})) for link in self.links if n in link)

    def edge_list(self) -> list[tuple[str, str]]:
        return sorted((a, b) for a, b in (sorted(link, key=_key) for link in self.links))

    def graph(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.edge_list())
        return g

    def shortest_path(self, a: str, b: str, without: Iterable[str] = ()) -> list[str] | None:
        g = self.graph()
        g.remove_nodes_from([x for x in without if x not in (a, b)])
        try:
            return nx.shortest_path(g, a, b)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return None

    def is_connected(self) -> bool:
        return len(self.nodes) <= 1 or nx.is_connected(self.graph())

    def diameter(self) -> int:
        return nx.diameter(self.graph()) if self.is_connected() else -1

    def path_loss_db(self, a: str, b: str) -> float:
        """Free-space-like path loss from positions (40 dB at distance 0.1, +20 dB/decade)."""
        if a in self.positions and b in self.positions:
            (x1, y1), (x2, y2) = self.positions[a], self.positions[b]
            d = max(0.01, math.hypot(x1 - x2, y1 - y2))
            return 40.0 + 20.0 * math.log10(d / 0.1)
        return 40.0

    def to_dict(self) -> dict:
        return {"name": self.name, "nodes": list(self.nodes), "links": [list(e) for e in self.edge_list()]}


def _key(n: str):
    return (len(n), n)


def _ids(n: int) -> list[str]:
    if n < 1:
        raise ValueError("need at least one node")
    return [node_id(i) for i in range(n)]


def line(n: int) -> Topology:
    ids = _ids(n)
    return Topology(ids, {frozenset((ids[i], ids[i + 1])) for i in range(n - 1)}, name=f"line{n}")


def ring(n: int) -> Topology:
    if n < 3:
        raise ValueError("ring needs >= 3 nodes")
    ids = _ids(n)
    return Topology(ids, {frozenset((ids[i], ids[(i + 1) % n])) for i in range(n)}, name=f"ring{n}")


def grid(n: int | None = None, *, rows: int | None = None, cols: int | None = None) -> Topology:
    """rows x cols grid; given only n, picks the most square factorisation (50 -> 5x10)."""
    if rows is None or cols is None:
        if n is None:
            raise ValueError("grid needs n or rows/cols")
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        cols = n // rows
    ids = _ids(rows * cols)
    links = set()
    pos = {}
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            pos[ids[i]] = (c / max(1, cols - 1), r / max(1, rows - 1))
            if c + 1 < cols:
                links.add(frozenset((ids[i], ids[i + 1])))
            if r + 1 < rows:
                links.add(frozenset((ids[i], ids[i + cols])))
    return Topology(ids, links, pos, name=f"grid{rows}x{cols}")


def random_geometric(n: int, radius: float | None = None, seed: int = 0, max_tries: int = 200) -> Topology:
    """Unit-square random geometric graph; re-drawn (then radius grown) until connected."""
    radius = radius or min(1.0, 1.6 * math.sqrt(math.log(max(n, 2)) / (math.pi * n)))
    rng = random.Random(seed)
    for attempt in range(max_tries):
        g = nx.random_geometric_graph(n, radius, seed=rng.randrange(1 << 30))
        if n == 1 or nx.is_connected(g):
            ids = _ids(n)
            pos = {ids[i]: tuple(g.nodes[i]["pos"]) for i in range(n)}
            links = {frozenset((ids[a], ids[b])) for a, b in g.edges()}
            return Topology(ids, links, pos, name=f"rgg{n}")
        if attempt % 20 == 19:
            radius *= 1.1
    raise RuntimeError("could not draw a connected random geometric graph")


def scale_free(n: int, m: int = 2, seed: int = 0) -> Topology:
    g = nx.barabasi_albert_graph(n, min(m, max(1, n - 1)), seed=seed)
    ids = _ids(n)
    return Topology(ids, {frozenset((ids[a], ids[b])) for a, b in g.edges()}, name=f"ba{n}")


GENERATORS = {
    "line": lambda d: line(int(d["n"])),
    "ring": lambda d: ring(int(d["n"])),
    "grid": lambda d: grid(d.get("n"), rows=d.get("rows"), cols=d.get("cols")),
    "random_geometric": lambda d: random_geometric(int(d["n"]), d.get("radius"), int(d.get("seed", 0))),
    "scale_free": lambda d: scale_free(int(d["n"]), int(d.get("m", 2)), int(d.get("seed", 0))),
}


def from_dict(d: Mapping[str, Any]) -> Topology:
    if "generator" in d:
        gen = GENERATORS.get(str(d["generator"]))
        if gen is None:
            raise ValueError(f"unknown generator {d['generator']!r}")
        return gen(d)
    links = [tuple(link) for link in d.get("links", [])]
    for link in links:
        if len(link) != 2:
            raise ValueError(f"bad link {link!r}")
    return Topology.from_links(links, d.get("nodes", []), name=str(d.get("name", "custom")))


def load(path: str | Path) -> Topology:
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".toml":
        return from_dict(tomllib.loads(text))
    import yaml

    return from_dict(yaml.safe_load(text) or {})


def parse_spec(spec: str, seed: int = 0) -> Topology:
    """'grid:50', 'line:5', 'ring:8', 'rgg:50', 'ba:50', or a path to a YAML/TOML file."""
    if ":" in spec and not Path(spec).exists():
        kind, _, n = spec.partition(":")
        kind = {"rgg": "random_geometric", "ba": "scale_free"}.get(kind, kind)
        return from_dict({"generator": kind, "n": int(n), "seed": seed})
    return load(spec)
