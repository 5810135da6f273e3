"""Policy decisions on /metrics (issue #17): keyvault's and governance's gRPC policy engine counts every decision,
allowed or denied, by method and the caller's role, on each service's Prometheus /metrics. Real processes, real
mutual TLS: an operator's allowed calls and a node's denied ones are scraped back from the HTTP endpoint."""
from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from testkit import eventually_sync, scaled

from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg
from x0tta6bl4.v1 import keyvault_pb2 as kpb
from x0tta6bl4.v1 import keyvault_pb2_grpc as kg

pytestmark = pytest.mark.timeout(180)
TD = "x0tta6bl4.mesh"
KV, GOV = "x0tta6bl4.v1.Keyvault", "x0tta6bl4.v1.Governance"


def scrape(stack, service: str) -> dict[tuple[str, str, str, str], float]:
    """x0_policy_decisions_total of one service process: (service, method, role, decision) -> count."""
    port = next(sp.health_port for sp in stack.procs if sp.name == service)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=scaled(5)) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "x0_policy_decisions":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    lb = s.labels
                    out[(lb["service"], lb["method"], lb["role"], lb["decision"])] = s.value
    return out


def call(fn, req) -> grpc.StatusCode:
    try:
        fn(req, timeout=scaled(10))
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_policy_decisions_are_counted_on_metrics_by_method_and_role(stack_factory):
    stack = stack_factory(services=("keyvault", "governance"))
    operator = svids.mint(stack.secrets.root, "operator", "metrics-op")
    node = svids.mint(stack.secrets.root, "node", "n7")
    before = {s: scrape(stack, s) for s in ("keyvault", "governance")}

    kv_op = kg.KeyvaultStub(svids.secure_channel(stack.grpc_addr("keyvault"), operator, "keyvault", TD))
    kv_node = kg.KeyvaultStub(svids.secure_channel(stack.grpc_addr("keyvault"), node, "keyvault", TD))
    gov_op = gg.GovernanceStub(svids.secure_channel(stack.grpc_addr("governance"), operator, "governance", TD))
    gov_node = gg.GovernanceStub(svids.secure_channel(stack.grpc_addr("governance"), node, "governance", TD))
    for _ in range(3):
        assert call(kv_op.ListIdentities, kpb.ListIdentitiesRequest()) == grpc.StatusCode.OK
        assert call(gov_op.ListProposals, g.ListProposalsRequest()) == grpc.StatusCode.OK
    for _ in range(2):
        assert call(kv_node.IssueIdentity, kpb.IssueIdentityRequest(node_id="n9")) == grpc.StatusCode.PERMISSION_DENIED
        assert call(gov_node.RegisterVoter, g.RegisterVoterRequest(voter="spiffe://x0tta6bl4.mesh/node/n7",
                                                                   balance=1e6)) == grpc.StatusCode.PERMISSION_DENIED
    expected = {("keyvault", f"{KV}/ListIdentities", "operator", "allowed"): 3,
                ("keyvault", f"{KV}/IssueIdentity", "node", "denied"): 2,
                ("governance", f"{GOV}/ListProposals", "operator", "allowed"): 3,
                ("governance", f"{GOV}/RegisterVoter", "node", "denied"): 2}

    def counted():
        now = {s: scrape(stack, s) for s in ("keyvault", "governance")}
        return {k: now[k[0]].get(k, 0) - before[k[0]].get(k, 0) for k in expected}
    eventually_sync(lambda: counted() == expected, 10, 0.1,
                    what="the decisions counted on keyvault's and governance's /metrics")
    # nothing counted as allowed that was denied, and no operator call counted as a node's
    after = {s: scrape(stack, s) for s in ("keyvault", "governance")}
    assert after["keyvault"].get(("keyvault", f"{KV}/IssueIdentity", "node", "allowed"), 0) == 0
    assert after["governance"].get(("governance", f"{GOV}/RegisterVoter", "node", "allowed"), 0) == 0
    assert after["governance"].get(("governance", f"{GOV}/ListProposals", "node", "allowed"), 0) == 0
