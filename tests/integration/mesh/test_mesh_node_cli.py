"""`python -m x0tta6bl4.mesh.node`: three processes on loopback, JSON lines out, commands in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

from testkit import eventually_sync


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_three_node_processes_deliver_and_obey_commands():
    ports = _free_ports(3)
    ids = ["n0", "n1", "n2"]
    links = {"n0": ["n1"], "n1": ["n0", "n2"], "n2": ["n1"]}
    procs, lines = {}, {n: [] for n in ids}
    for i, n in enumerate(ids):
        cmd = [sys.executable, "-u", "-m", "x0tta6bl4.mesh.node", "--id", n, "--bind", f"127.0.0.1:{ports[i]}",
               "--telemetry-interval", "0", "--log-data"]  # fmt: skip
        for p in links[n]:
            cmd += ["--peer", f"{p}=127.0.0.1:{ports[ids.index(p)]}"]
        if n == "n0":
            cmd += ["--traffic", "n2", "--rate", "50"]
        procs[n] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

        def read(proc=procs[n], out=lines[n]):
            for line in proc.stdout:
                out.append(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
    try:
        eventually_sync(lambda: any(r["type"] == "delivered" for r in lines["n2"]), 10)
        assert any(r["type"] == "ready" for r in lines["n0"])
        assert any(r["type"] == "delivered" and r["origin"] == "n0" and r["hops"] == 1 for r in lines["n2"])
        eventually_sync(lambda: any(r["type"] == "ack" and r["dest"] == "n2" for r in lines["n0"]), 5)
        procs["n0"].stdin.write(json.dumps({"kind": "avoid", "peer": "n1"}) + "\n")
        procs["n0"].stdin.write(json.dumps({"kind": "bogus"}) + "\n")
        procs["n0"].stdin.write("not json\n")
        procs["n0"].stdin.write(json.dumps({"kind": "telemetry"}) + "\n")
        procs["n0"].stdin.flush()
        # the commands are answered in order: three results, then the telemetry line
        eventually_sync(lambda: any(r["type"] == "telemetry" for r in lines["n0"]), 5)
        results = [r for r in lines["n0"] if r["type"] == "result"]
        assert [r["ok"] for r in results] == [True, False, False]
        tel = [r for r in lines["n0"] if r["type"] == "telemetry"][-1]
        assert tel["avoided"] == ["n1"] and tel["route_count"] == 0  # the only relay is avoided
        procs["n1"].stdin.write(json.dumps({"kind": "shutdown"}) + "\n")
        procs["n1"].stdin.flush()
        assert procs["n1"].wait(timeout=5) == 0
        assert any(r.get("final") for r in lines["n1"] if r["type"] == "telemetry")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(timeout=5)
    assert all(p.returncode == 0 for p in procs.values())
