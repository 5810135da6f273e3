"""The live-fault recording format (x0tta6bl4.analysis.livedata): round trip, labels, clear errors."""

import gzip
import json

import pytest

from x0tta6bl4.analysis import livedata
from x0tta6bl4.v1 import events_pb2


def _window(k: int, down: str | None = None) -> events_pb2.TelemetryWindow:
    w = events_pb2.TelemetryWindow()
    w.meta.event_id = f"w{k}"
    links = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    for n, peers in links.items():
        t = w.nodes.add()
        t.node_id = n
        t.reachable = n != down
        t.cpu_pct, t.mem_pct = 20.0, 40.0
        t.neighbours.extend(peers)
        for p in peers:
            q = t.links.add()
            q.peer, q.rssi_dbm, q.snr_db, q.loss_rate, q.latency_ms, q.link_age_s = p, -60, 30, 0.0, 2.0, 10.0 + k
    return w


def _session(split: str = "train") -> livedata.Session:
    windows = [_window(k, down="c" if 10 <= k < 20 else None) for k in range(40)]
    return livedata.Session("s1", split, {"mode": "loopback", "links": [["a", "b"], ["b", "c"]]}, windows,
                            [livedata.Episode("kill", "c", 10, 20)])


def _write(tmp_path, s):
    livedata.write_session(tmp_path, s)
    (tmp_path / "manifest.json").write_text(json.dumps({"sessions": [{"name": s.name, "split": s.split}]}))


def test_round_trip_and_labels(tmp_path):
    _write(tmp_path, _session())
    (s,) = livedata.load(tmp_path)
    assert (s.name, s.split, len(s.windows)) == ("s1", "train", 40)
    assert s.episodes[0].fault_type == "node_down" and s.neighbours("c") == ["b"]
    assert s.windows[12].nodes[2].reachable is False
    samples = livedata.samples([s])
    ks = [x.window for x in samples]
    # the first 2 snapshots after the injection and 12 after the heal are left out
    assert 10 not in ks and 11 not in ks and 12 in ks and 19 in ks and 20 not in ks and 31 not in ks and 32 in ks
    inc = next(x for x in samples if x.window == 15)
    assert inc.incidents[0]["root"] == "c" and sorted(inc.incidents[0]["members"]) == ["b", "c"]
    assert inc.y_root.tolist() == [0, 0, 1] and inc.y_anom.tolist() == [0, 1, 1]
    normal = next(x for x in samples if x.window == 5)
    assert normal.incidents == [] and normal.y_anom.sum() == 0
    assert livedata.load(tmp_path, ["test"]) == []


def test_bad_recordings_are_named(tmp_path):
    with pytest.raises(livedata.LiveDataError, match=r"manifest\.json: no recording here"):
        livedata.load(tmp_path)
    _write(tmp_path, _session())
    with pytest.raises(livedata.LiveDataError, match="unknown split"):
        livedata.load(tmp_path, ["training"])
    meta = json.loads((tmp_path / "s1.json").read_text())
    meta["episodes"][0]["fault"] = "meteor"
    (tmp_path / "s1.json").write_text(json.dumps(meta))
    with pytest.raises(livedata.LiveDataError, match=r"s1\.json: unknown fault 'meteor'"):
        livedata.load(tmp_path)
    meta["episodes"][0].update(fault="kill", off=99)
    (tmp_path / "s1.json").write_text(json.dumps(meta))
    with pytest.raises(livedata.LiveDataError, match=r"spans snapshots 10\.\.99, the recording has 40"):
        livedata.load(tmp_path)
    meta["episodes"][0]["off"] = 20
    (tmp_path / "s1.json").write_text(json.dumps(meta))
    data = gzip.decompress((tmp_path / "s1.pb.gz").read_bytes())
    (tmp_path / "s1.pb.gz").write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(livedata.LiveDataError, match=r"s1\.pb\.gz: truncated snapshot"):
        livedata.load(tmp_path)
    (tmp_path / "s1.pb.gz").write_bytes(b"plain")
    with pytest.raises(livedata.LiveDataError, match="not a gzip recording"):
        livedata.load(tmp_path)


def test_checked_in_recording_is_small_and_split():
    sessions = livedata.load()
    total = sum(p.stat().st_size for p in livedata.DEFAULT_DIR.iterdir())
    assert total < 5_000_000
    topo = {sp: {s.meta["topology"] for s in sessions if s.split == sp} for sp in livedata.SPLITS}
    assert topo["test"] and not topo["test"] & (topo["train"] | topo["val"])   # held-out topologies
    faults = {e.fault for s in sessions if s.split == "test" for e in s.episodes}
    assert faults == set(livedata.FAULTS)
