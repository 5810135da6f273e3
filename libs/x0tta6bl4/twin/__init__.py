"""Digital twin of the mesh: topology, failure/cascade what-ifs, MTTR model,
and a seeded telemetry simulator with labelled fault injection."""

from .mttr import MttrModel
from .twin import FailureSimulationResult, MeshDigitalTwin

__all__ = ["FailureSimulationResult", "MeshDigitalTwin", "MttrModel"]
