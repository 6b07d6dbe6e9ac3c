"""Local PostHog simulator: groups, group types, property definitions, exports (+ S3-like storage).

    from posthog_sim import Simulator, SimConfig, DatasetSpec, FaultSpec
    with Simulator(SimConfig(dataset=DatasetSpec(seed=7, groups_per_type=(1000, 300)))) as sim:
        ...
"""
from .config import ALL_FAULT_KINDS, NEXT_LINK_MODES, DatasetSpec, FaultSpec, RequestRecord, SimConfig
from .dataset import Dataset
from .server import Simulator, decode_cursor, encode_cursor

__all__ = [
    "ALL_FAULT_KINDS",
    "NEXT_LINK_MODES",
    "Dataset",
    "DatasetSpec",
    "FaultSpec",
    "RequestRecord",
    "SimConfig",
    "Simulator",
    "decode_cursor",
    "encode_cursor",
]
