"""GetPrivateBundles (many nodes' private bundles in one call) and the mesh host's BundleBatcher
that coalesces its nodes' reloads into it, against a real keyvault process."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.integration.keyvault.conftest import TD, svid_for
from x0tta6bl4.bus import subjects
from x0tta6bl4.mesh.host import BundleBatcher
from x0tta6bl4.pqc import NodeIdentity
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.v1 import events_pb2, keyvault_pb2_grpc
from x0tta6bl4.v1 import keyvault_pb2 as pb


def code_of(fn, *a, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, timeout=10, **kw)
    return ei.value.code(), ei.value.details()


def test_bundles_in_order_equal_to_single_calls_and_audited(keyvault):
    s = keyvault.stub
    nodes = [f"b{i}" for i in range(12)]
    for n in nodes:
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    s.Rotate(pb.RotateRequest(node_ids=nodes[:4], overlap_s=60), timeout=30)     # some at generation 2
    singles = {n: s.GetPrivateBundle(pb.GetPrivateBundleRequest(node_id=n), timeout=10) for n in nodes}
    order = nodes[::-1]
    r = s.GetPrivateBundles(pb.GetPrivateBundlesRequest(node_ids=order), timeout=10)
    assert [b.record.node_id for b in r.bundles] == order
    for b in r.bundles:
        one = singles[b.record.node_id]
        assert b.private_bundle == one.private_bundle and b.record == one.record
        ident = NodeIdentity.import_private(b.private_bundle)
        assert ident.signing.key_id == b.record.sig_key_id
        assert b.record.generation == (2 if b.record.node_id in nodes[:4] else 1)

    async def last_audit(nc):
        m = await nc.jetstream().get_last_msg("AUDIT", subjects.audit("keyvault", "identity.private_exported"))
        return events_pb2.AuditEvent.FromString(m.data)
    ev = keyvault.nats(last_audit)            # one audit event names every exported node
    assert ev.details["via"] == "grpc" and ev.subject_id == "12 nodes"
    for b in r.bundles:
        assert ev.details[b.record.node_id] == (f"gen={b.record.generation} sig={b.record.sig_key_id} "
                                                f"kem={b.record.kem_key_id}")


def test_bundles_errors_name_what_is_wrong(keyvault):
    s = keyvault.stub
    for n in ("e1", "e2", "erv"):
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    s.Revoke(pb.RevokeRequest(node_id="erv", reason="test"), timeout=10)
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest())
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "empty" in msg
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest(node_ids=["e1", "e2", "e1"]))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "'e1'" in msg
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest(node_ids=[f"x{i}" for i in range(1001)]))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "1000" in msg
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest(node_ids=["e1", "ghost"]))
    assert c == grpc.StatusCode.NOT_FOUND and "ghost" in msg
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest(node_ids=["e1", "erv"]))
    assert c == grpc.StatusCode.FAILED_PRECONDITION
    c, msg = code_of(s.GetPrivateBundles, pb.GetPrivateBundlesRequest(node_ids=["e1", "bad id!"]))
    assert c == grpc.StatusCode.INVALID_ARGUMENT

    async def over_nats(nc):
        rep = await nc.request(subjects.KEYVAULT_RPC.format(method="GetPrivateBundles"),
                               pb.GetPrivateBundlesRequest(node_ids=["e1"]).SerializeToString(), timeout=10)
        return rep.headers or {}
    headers = keyvault.nats(over_nats)       # private keys never travel over NATS
    assert headers.get("X0-Error-Code") == "PERMISSION_DENIED"


def test_batcher_coalesces_concurrent_fetches_and_isolates_failures(keyvault):
    s = keyvault.stub
    nodes = [f"h{i}" for i in range(20)]
    for n in [*nodes, "hrv"]:
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    s.Revoke(pb.RevokeRequest(node_id="hrv", reason="test"), timeout=10)

    keyvault.stack.secrets.add_mesh_host("hb", [*nodes, "hrv"])     # the mesh host acting for these nodes
    me = svid_for(keyvault.stack, "host", "hb")

    async def go():
        async with svids.aio_channel(keyvault.addr, me, "keyvault", TD) as ch:
            b = BundleBatcher(keyvault_pb2_grpc.KeyvaultStub(ch))
            got = await asyncio.gather(*(b.get(n) for n in nodes))     # 20 reloads at once: one call
            calls_all_good = b.calls
            mixed = await asyncio.gather(*(b.get(n) for n in [*nodes[:5], "hrv", nodes[0]]),
                                         return_exceptions=True)
            return got, calls_all_good, mixed, b.calls
    got, calls_all_good, mixed, calls = asyncio.run(go())
    assert calls_all_good == 1
    assert [r.record.node_id for r in got] == nodes
    # a revoked node in the batch: the batch call fails, then each node is asked on its own,
    # so the good ones still get their bundles and only the revoked one fails
    assert [r.record.node_id for r in mixed[:5]] == nodes[:5] and mixed[6].record.node_id == nodes[0]
    assert isinstance(mixed[5], grpc.aio.AioRpcError) and mixed[5].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert calls == 1 + 1 + 6          # the failed batch, then the 6 distinct nodes one by one
