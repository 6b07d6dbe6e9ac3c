"""Configuration objects for the PostHog simulator."""
from __future__ import annotations

from dataclasses import dataclass, field

ALL_FAULT_KINDS: tuple[str, ...] = (
    "500",
    "502",
    "503",
    "504",
    "429",
    "429_html",
    "reset_before",
    "reset_during",
    "truncate",
    "bad_length",
    "empty_200",
    "slow",
    "bad_json",
)

NEXT_LINK_MODES: tuple[str, ...] = (
    "normal",
    "foreign_origin",
    "other_scheme",
    "outside_api",
    "loop",
    "relative",
    "http_downgrade",
)


@dataclass(frozen=True)
class DatasetSpec:
    seed: int = 7
    groups_per_type: tuple[int, ...] = (1000, 300, 50)
    n_exports: int = 40
    hostile: bool = False
    other_user_exports: int = 5
    property_keys_per_type: int = 12
    # dataset exports (JSON Lines) of user 1, whose content/ redirects to a path on the API
    dataset_exports: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.groups_per_type) <= 5:
            raise ValueError("groups_per_type must have 1..5 entries (PostHog allows at most 5 group types)")
        if any(int(n) < 0 for n in self.groups_per_type):
            raise ValueError("group counts must be >= 0")
        object.__setattr__(self, "groups_per_type", tuple(int(n) for n in self.groups_per_type))


@dataclass(frozen=True)
class FaultSpec:
    seed: int = 1
    rate: float = 0.0
    kinds: tuple[str, ...] = ALL_FAULT_KINDS
    path_regex: str | None = None
    slow_seconds: float = 3.0

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in ALL_FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds: {bad}; valid: {ALL_FAULT_KINDS}")
        object.__setattr__(self, "kinds", tuple(self.kinds))


@dataclass
class SimConfig:
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    # (count, window seconds) pairs, DRF SimpleRateThrottle semantics; None or () = unlimited
    rate_limits: tuple[tuple[int, float], ...] | None = ((480, 60.0), (4800, 3600.0))
    # POST query/'s own bucket: HogQLQueryThrottle, 120/hour (posthog/rate_limit.py)
    query_rate_limits: tuple[tuple[int, float], ...] | None = ((120, 3600.0),)
    faults: FaultSpec = field(default_factory=FaultSpec)
    api_key: str = "phx_sim_key_0123456789"
    scopes: tuple[str, ...] = ("*",)
    # extra personal API keys: {key: (user_id, scopes)}
    extra_keys: dict = field(default_factory=dict)
    presign_ttl: int = 3600
    content_mode: str = "redirect"  # "redirect" | "direct"
    explicit_members: str = "missing"  # "missing" | "legacy"
    property_definitions: str = "current"  # "current" | "legacy"
    next_link: str = "normal"
    host: str = "127.0.0.1"
    port: int = 0
    storage_port: int = 0
    foreign_port: int = 0
    # polls (retrieves) of a video export before it gets content
    video_polls: int = 3
    # cap on stored RequestRecords (oldest dropped); None = unbounded
    request_log_limit: int | None = None
    # start time override (epoch seconds) for export timestamps; None = time.time() at construction
    now: float | None = None
    # further projects on the same server, each with its own data: {project id: DatasetSpec};
    # project 1 (`dataset`) is every key's current project ('@current')
    extra_projects: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.content_mode not in ("redirect", "direct"):
            raise ValueError("content_mode must be 'redirect' or 'direct'")
        if self.explicit_members not in ("missing", "legacy"):
            raise ValueError("explicit_members must be 'missing' or 'legacy'")
        if self.property_definitions not in ("current", "legacy"):
            raise ValueError("property_definitions must be 'current' or 'legacy'")
        if self.next_link not in NEXT_LINK_MODES:
            raise ValueError(f"next_link must be one of {NEXT_LINK_MODES}")
        self.scopes = tuple(self.scopes)
        if self.rate_limits:
            self.rate_limits = tuple((int(c), float(w)) for c, w in self.rate_limits)
        else:
            self.rate_limits = ()
        if self.query_rate_limits:
            self.query_rate_limits = tuple((int(c), float(w)) for c, w in self.query_rate_limits)
        else:
            self.query_rate_limits = ()


@dataclass(frozen=True)
class RequestRecord:
    ts: float
    server: str  # "api" | "storage" | "foreign"
    method: str
    path: str
    query: str
    authorization: str | None
    status: int
    fault: str | None
    bytes_sent: int
