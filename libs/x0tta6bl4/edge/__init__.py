"""Edge crisis mode: nodes provisioned offline (PQC identity, routing table, policy) that keep working
with no broker and merge their state through CRDTs when they meet peers or reconnect.

* :mod:`x0tta6bl4.edge.state` - the CRDT document (pycrdt) and Lamport clock (no I/O)
* :mod:`x0tta6bl4.edge.node`  - provisioning, encrypted local storage, offline work
* :mod:`x0tta6bl4.edge.sync`  - reconnect: compare-and-set merge with the broker, audit events in causal order
"""
from .node import (
           ACTIONS,
           DEFAULT_POLICY,
           Decision,
           EdgeError,
           EdgeNode,
           load_routes_file,
           routing_table,
)
from .state import AuditEntry, EdgeState

__all__ = ["ACTIONS", "DEFAULT_POLICY", "AuditEntry", "Decision", "EdgeError", "EdgeNode", "EdgeState",
           "load_routes_file", "routing_table"]
