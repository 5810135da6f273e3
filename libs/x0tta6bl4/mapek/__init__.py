"""The stage logic of each MAPE-K step (no I/O).

Each module composes the domain packages for one stage and is the one place
that builds that stage's protobuf messages:

- ``monitor``  : node telemetry -> health state changes -> a cycle's TelemetryWindow
- ``analyze``  : TelemetryWindow -> Anomaly events (detector + root cause)
- ``plan``     : Anomaly -> Plan (decision matrix, twin, knowledge) -> ActionRequest
- ``verify``   : telemetry after an action -> Verification (MTTR)
"""
