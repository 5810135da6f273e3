"""The service runtime's own /ready checks (registered at start): each consumer bound and fetching, every
stream and bucket the service needs present; /ready lists what fails with the reason."""
from __future__ import annotations

import json

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import FETCH_FAILURES_NOT_READY, Service, _stream_of
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.v1 import events_pb2


class _Connected:
    is_connected = True


async def _nothing(msg, ctx) -> None:
    return None


def service() -> Service:
    app = Service("planner", CommonSettings())
    app.subscribe("planner", events_pb2.Anomaly, _nothing)
    app.nc = _Connected()   # type: ignore[assignment]  # readiness reads only is_connected
    app._add_builtin_checks()
    return app


def ready(app: Service) -> tuple[str, dict]:
    status, _, body = HealthServer(app, 0).route("/ready")
    return status, json.loads(body)


def test_a_consumer_not_bound_or_failing_to_fetch_is_not_ready_and_says_why():
    app = service()
    [sub] = app.subscriptions
    status, body = ready(app)
    assert status.startswith("503") and body["failing"] == {"consumer:planner": "consumer planner not bound"}
    sub.bound = True
    status, body = ready(app)
    assert status.startswith("200") and body["ready"] is True and body["failing"] == {}
    sub.failures, sub.last_error = FETCH_FAILURES_NOT_READY, "ServiceUnavailableError"
    status, body = ready(app)
    assert status.startswith("503")
    assert body["failing"] == {"consumer:planner": "3 fetches on consumer planner failed in a row: "
                                                   "ServiceUnavailableError"}
    sub.failures = 0
    assert ready(app)[1]["ready"] is True


def test_missing_topology_is_not_ready_with_what_is_missing():
    app = service()
    app.subscriptions[0].bound = True
    app._missing = ["stream MAPEK", "bucket processed"]
    status, body = ready(app)
    assert status.startswith("503") and body["failing"] == {"topology": "missing: stream MAPEK, bucket processed"}


def test_what_a_service_needs_grows_with_what_it_uses():
    app = service()
    assert app.needed_topology() == (["AUDIT", "DLQ", "MAPEK"], ["processed"])
    app.needs_subject(subjects.telemetry("n1"))
    app.needs_subject(subjects.MESH_CMD_ALL.replace("*", "n1"))      # core NATS: no stream
    app.needed_buckets.add("incidents")
    assert app.needed_topology() == (["AUDIT", "DLQ", "MAPEK", "MESH"], ["incidents", "processed"])
    assert _stream_of(subjects.audit("planner", "decision.made")) == "AUDIT"
    assert _stream_of(subjects.gov_event("proposal")) == "GOV" and _stream_of("nothing.here") is None
