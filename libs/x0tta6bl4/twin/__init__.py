"""Digital twin of the mesh: topology, failure/cascade what-ifs, MTTR model,
and a seeded telemetry simulator with labelled fault injection."""

from .mttr import MttrModel
from .telemetry import (
    FAULT_TYPES,
    FEATURES,
    FaultSpec,
    TelemetrySimulator,
    TelemetryWindow,
    WindowLabels,
    generate_labelled_windows,
)
from .twin import FailureSimulationResult, MeshDigitalTwin

__all__ = [
    "FAULT_TYPES",
    "FEATURES",
    "FailureSimulationResult",
    "FaultSpec",
    "MeshDigitalTwin",
    "MttrModel",
    "TelemetrySimulator",
    "TelemetryWindow",
    "WindowLabels",
    "generate_labelled_windows",
]
