"""Service readiness checks (the /ready extension point): any failing or raising check makes /ready false
and every check's details are shown in /ready's JSON."""
from __future__ import annotations

import json

from x0tta6bl4.bus.app import Service
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.config import CommonSettings


class _Connected:
    is_connected = True


def service() -> Service:
    app = Service("svc", CommonSettings())
    app.nc = _Connected()   # type: ignore[assignment]  # readiness reads only is_connected
    return app


def ready_json(app: Service) -> tuple[str, dict]:
    status, _, body = HealthServer(app, 0).route("/ready")
    return status, json.loads(body)


def test_checks_gate_ready_and_show_details():
    app = service()
    state = {"ok": True}
    app.readiness_check("writer", lambda: (state["ok"], {"quarantined": 2}))
    status, body = ready_json(app)
    assert status.startswith("200") and body["ready"] is True
    assert body["checks"] == {"writer": {"ok": True, "quarantined": 2}}
    state["ok"] = False
    status, body = ready_json(app)
    assert status.startswith("503") and body["ready"] is False
    assert body["checks"]["writer"] == {"ok": False, "quarantined": 2}
    state["ok"] = True                     # recovers
    assert ready_json(app)[1]["ready"] is True


def test_a_raising_check_is_not_ready_and_says_why():
    app = service()
    app.readiness_check("ok", lambda: (True, {}))

    def broken() -> tuple[bool, dict]:
        raise RuntimeError("stream GOV missing")
    app.readiness_check("broken", broken)
    status, body = ready_json(app)
    assert status.startswith("503")
    assert body["checks"]["broken"] == {"ok": False, "error": "RuntimeError: stream GOV missing"}
    assert body["checks"]["ok"] == {"ok": True}
