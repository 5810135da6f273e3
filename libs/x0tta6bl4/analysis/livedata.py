"""Labelled telemetry recorded on real meshes under injected faults (``tools/record_live_faults.py``).

A *session* is one real mesh (loopback host or network namespaces) run through a sequence of
*episodes*: a fault injected on one node (the node at fault), held, then healed. Every
``step_s`` the recorder stored the monitor's view of the mesh -- the ``NodeTelemetry`` of every
node, as the monitor merges it (reachable, neighbours' loss reports, security evidence) -- as one
``TelemetryWindow``, the message the analyzer receives. Files, per session ``NAME``:

* ``NAME.json``: the session's metadata (mode, topology and its links, flows, seed, ``step_s``),
  its split and the episodes ``{fault, fault_type, victim, params, on, off}`` where ``on`` / ``off``
  are the indices of the first snapshot taken after the fault was injected / healed;
* ``NAME.pb.gz``: the snapshots, gzip of length-prefixed (u32 big-endian) ``TelemetryWindow``.

``manifest.json`` in the directory lists the sessions and their split (``train``, ``val``,
``test``); the held-out ``test`` sessions run topologies that no training session ran.

Labels (:func:`samples`) follow the twin's: the node at fault is the incident's root cause and the
incident's members are the root and its topology neighbours (whose links to it suffer). A step is
an incident step once the fault has been active for ``min_active`` snapshots; the first
``min_active`` snapshots after the injection (no evidence can exist yet) and the ``recovery``
snapshots after the heal (the detectors' 12-sample history still holds the fault) are left out of
the evaluation, neither positive nor negative. Every other step is normal for every node.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from x0tta6bl4.v1 import events_pb2

from .dataset import TYPE_INDEX, GraphSample
from .features import extract
from .live import LIVE_STEPS, History, to_window

FAULTS: dict[str, str] = {
    "kill": "node_down",            # the node process is killed (SIGKILL / agent crash)
    "slow": "degrading_link",       # every datagram the node sends is delayed (its links get slower)
    "loss": "degrading_link",       # a share of what the node receives is dropped (nftables / agent)
    "flap": "flapping",             # all the node's links go down and up again, periodically
    "congestion": "congestion",     # the node's links are rate-limited (tc tbf) and saturated by cross traffic
}
"""Live fault -> the twin's fault type it is labelled with."""

SPLITS = ("train", "val", "test")
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "datasets" / "live-faults"
"""The checked-in recording (repo checkout); pass another directory to read elsewhere."""


class LiveDataError(ValueError):
    """A recording that cannot be read; the message names the file and what is wrong."""


@dataclass
class Episode:
    fault: str
    victim: str
    on: int
    off: int
    params: dict = field(default_factory=dict)

    @property
    def fault_type(self) -> str:
        return FAULTS[self.fault]

    def as_dict(self) -> dict:
        return {"fault": self.fault, "fault_type": self.fault_type, "victim": self.victim, "on": self.on,
                "off": self.off, "params": self.params}


@dataclass
class Session:
    name: str
    split: str
    meta: dict
    windows: list[events_pb2.TelemetryWindow]
    episodes: list[Episode]

    @property
    def links(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in self.meta.get("links", [])]

    def neighbours(self, node: str) -> list[str]:
        return sorted({b for a, b in self.links if a == node} | {a for a, b in self.links if b == node})


# ------------------------------------------------------------------------------------------ files
def write_session(directory: str | Path, s: Session) -> tuple[Path, Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {**s.meta, "name": s.name, "split": s.split, "snapshots": len(s.windows),
            "episodes": [e.as_dict() for e in s.episodes]}
    jp, pp = d / f"{s.name}.json", d / f"{s.name}.pb.gz"
    jp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    with gzip.open(pp, "wb", compresslevel=9) as f:
        for w in s.windows:
            b = w.SerializeToString()
            f.write(struct.pack("!I", len(b)) + b)
    return jp, pp


def _windows(path: Path) -> Iterator[events_pb2.TelemetryWindow]:
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise LiveDataError(f"{path}: not a gzip recording ({e})") from None
    i = 0
    while i < len(data):
        if i + 4 > len(data):
            raise LiveDataError(f"{path}: truncated length prefix at byte {i}")
        (n,) = struct.unpack_from("!I", data, i)
        if i + 4 + n > len(data):
            raise LiveDataError(f"{path}: truncated snapshot at byte {i} ({n} bytes announced)")
        w = events_pb2.TelemetryWindow()
        try:
            w.ParseFromString(data[i + 4:i + 4 + n])
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: name the file
            raise LiveDataError(f"{path}: snapshot at byte {i} is not a TelemetryWindow ({e})") from None
        yield w
        i += 4 + n


def read_session(json_path: str | Path) -> Session:
    jp = Path(json_path)
    try:
        meta = json.loads(jp.read_text())
    except (OSError, ValueError) as e:
        raise LiveDataError(f"{jp}: cannot read the session metadata ({e})") from None
    try:
        name, split = meta["name"], meta["split"]
        episodes = [Episode(e["fault"], e["victim"], int(e["on"]), int(e["off"]), dict(e.get("params", {})))
                    for e in meta["episodes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise LiveDataError(f"{jp}: missing or bad field {e}") from None
    if split not in SPLITS:
        raise LiveDataError(f"{jp}: split {split!r} is not one of {', '.join(SPLITS)}")
    for ep in episodes:
        if ep.fault not in FAULTS:
            raise LiveDataError(f"{jp}: unknown fault {ep.fault!r} (known: {', '.join(FAULTS)})")
    windows = list(_windows(jp.with_name(f"{name}.pb.gz")))
    for ep in episodes:
        if not 0 <= ep.on <= ep.off <= len(windows):
            raise LiveDataError(f"{jp}: episode {ep.fault} on {ep.victim} spans snapshots {ep.on}..{ep.off}, "
                                f"the recording has {len(windows)}")
    return Session(name, split, meta, windows, episodes)


def load(directory: str | Path | None = None, splits: Iterable[str] | None = None) -> list[Session]:
    """The sessions of a recording directory (its ``manifest.json``), optionally only some splits."""
    d = Path(directory) if directory is not None else DEFAULT_DIR
    mp = d / "manifest.json"
    try:
        manifest = json.loads(mp.read_text())
    except FileNotFoundError:
        raise LiveDataError(f"{mp}: no recording here (tools/record_live_faults.py records one)") from None
    except (OSError, ValueError) as e:
        raise LiveDataError(f"{mp}: cannot read the manifest ({e})") from None
    want = set(splits) if splits is not None else set(SPLITS)
    unknown = want - set(SPLITS)
    if unknown:
        raise LiveDataError(f"unknown split(s) {sorted(unknown)}: use {', '.join(SPLITS)}")
    out = []
    for entry in manifest.get("sessions", []):
        if entry.get("split") in want:
            out.append(read_session(d / f"{entry['name']}.json"))
    return out


# ---------------------------------------------------------------------------------------- labels
@dataclass
class Step:
    """One labelled detector input: the window at snapshot ``k`` and the history before it."""
    session: str
    k: int
    window: events_pb2.TelemetryWindow
    episode: Episode | None         # the incident active at this step (None: normal)


def steps(s: Session, min_active: int = 2, recovery: int = LIVE_STEPS) -> list[Step]:
    """The evaluated steps of a session (see the module doc for what is left out)."""
    out = []
    for k, w in enumerate(s.windows):
        active, skip = None, False
        for e in s.episodes:
            if e.on + min_active <= k < e.off:
                active = e
            elif e.on <= k < e.on + min_active or e.off <= k < e.off + recovery:
                skip = True
        if active is None and skip:
            continue
        out.append(Step(s.name, k, w, active))
    return out


def samples(sessions: Iterable[Session], min_active: int = 2, recovery: int = LIVE_STEPS,
            keep_window: bool = False) -> list[GraphSample]:
    """Detector inputs with labels, as the analyzer builds them: per snapshot, the node series of the
    snapshots before it (:class:`~x0tta6bl4.analysis.live.History`, :func:`~x0tta6bl4.analysis.live.to_window`).

    ``keep_window``: ``meta["window"]`` holds the snapshot's ``TelemetryWindow`` (for the rules)."""
    out: list[GraphSample] = []
    scenario = 0
    for s in sessions:
        history = History(keep=LIVE_STEPS + 1)
        wanted = {st.k: st for st in steps(s, min_active, recovery)}
        ep_ids = {id(e): scenario + i for i, e in enumerate(s.episodes)}
        scenario += len(s.episodes) + 1
        for k, w in enumerate(s.windows):
            key = w.meta.event_id or f"{s.name}:{k}"
            snap = history.add(key, w.nodes)
            st = wanted.get(k)
            if st is None or not snap.samples:
                continue
            conv = to_window(history.before(key, LIVE_STEPS - 1), snap)
            nf = extract(conv.window)
            n = len(nf.node_ids)
            index = {v: i for i, v in enumerate(nf.node_ids)}
            y_anom = np.zeros(n, dtype=np.float32)
            y_type = np.full(n, -1, dtype=np.int64)
            y_root = np.zeros(n, dtype=np.float32)
            incidents = []
            e = st.episode
            if e is not None and e.victim in index:
                members = [m for m in [e.victim, *s.neighbours(e.victim)] if m in index]
                for m in members:
                    y_anom[index[m]] = 1.0
                    y_type[index[m]] = TYPE_INDEX[e.fault_type]
                y_root[index[e.victim]] = 1.0
                incidents.append({"root": e.victim, "fault_type": e.fault_type, "members": members,
                                  "first_window": e.on + min_active, "fault": e.fault})
            meta = {"session": s.name, "split": s.split, "mode": s.meta.get("mode"), "k": k,
                    "fault": e.fault if e is not None else "normal"}
            if keep_window:
                meta["window"] = w
            sample = GraphSample(nf.x, nf.edge_index, y_anom, y_type, y_root, list(nf.node_ids), incidents,
                                 ep_ids[id(e)] if e is not None else scenario - 1, k, meta)
            out.append(sample)
    return out


def summary(sessions: Iterable[Session]) -> dict:
    """Counts per split and fault: sessions, episodes, snapshots."""
    out: dict = {}
    for s in sessions:
        sp = out.setdefault(s.split, {"sessions": 0, "snapshots": 0, "episodes": {}})
        sp["sessions"] += 1
        sp["snapshots"] += len(s.windows)
        for e in s.episodes:
            sp["episodes"][e.fault] = sp["episodes"].get(e.fault, 0) + 1
    return out
