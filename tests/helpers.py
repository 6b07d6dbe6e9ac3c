"""Test helpers: start the simulator, build resources for it, run real Dagster syncs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import openpyxl

from assets.tabular import CSV_FORMAT
from pipelines.definitions import defs
from posthog_sim import DatasetSpec, FaultSpec, SimConfig, Simulator
from resources.lake import Lake, LakeResource, Location
from resources.posthog import PostHogResource


@dataclass
class SimEnv:
    sim: Simulator
    tmp: Path
    posthog_overrides: dict[str, Any] = field(default_factory=dict)
    lake_uri: str | None = None  # e.g. s3://bucket/prefix; default: a local lake under tmp

    @property
    def lake_root(self) -> Any:
        """The lake root: a local Path, or the s3:// URI string of an S3 lake."""
        return self.lake_uri or self.tmp / "lake"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def database(self) -> Path:
        return self.tmp / "warehouse.duckdb"

    def resources(self, **posthog: Any) -> dict[str, Any]:
        config = {
            "host": self.sim.api_url,
            "project_id": str(self.sim.project_id),
            "personal_api_key": self.sim.api_key,
            "state_dir": str(self.state_dir),
            "requests_per_minute": "0",
            "requests_per_hour": "0",
            "request_retry_delay": 0.01,
            "request_max_retry_delay": 0.2,
            "request_timeout": 5.0,
            **self.posthog_overrides,
            **posthog,
        }
        return {
            "posthog": PostHogResource(**config),
            "lake": LakeResource(lake_root=str(self.lake_root), duckdb_database=str(self.database),
                                 state_dir=str(self.state_dir)),
        }

    def lake(self) -> Lake:
        return self.resources()["lake"].get_lake()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return self.lake().query(sql, params)

    def sync(self, *, select: str | Sequence[str] = "*", run_config: dict | None = None,
             raise_on_error: bool = True, instance: dg.DagsterInstance | None = None,
             **posthog: Any) -> dg.ExecuteInProcessResult:
        """A real Dagster run (in-process executor) of the selected assets and their checks."""
        assets = list(defs.assets or [])
        checks = list(defs.asset_checks or [])
        selection = select if isinstance(select, str) else list(select)
        return dg.materialize(
            [*assets, *checks],
            selection=selection,
            resources=self.resources(**posthog),
            run_config=run_config,
            raise_on_error=raise_on_error,
            instance=instance,
        )


@contextlib.contextmanager
def start_sim(tmp_path: Path, *, groups_per_type: Sequence[int] = (450, 230, 17),
              n_exports: int = 30, seed: int = 3, faults: FaultSpec | None = None,
              lake_uri: str | None = None, **config: Any) -> Iterator[SimEnv]:
    dataset = DatasetSpec(seed=seed, groups_per_type=tuple(groups_per_type), n_exports=n_exports,
                          hostile=config.pop("hostile", False),
                          dataset_exports=config.pop("dataset_exports", 0),
                          property_keys_per_type=config.pop("property_keys_per_type", 12))
    cfg = SimConfig(dataset=dataset, faults=faults or FaultSpec(rate=0.0),
                    rate_limits=config.pop("rate_limits", None), **config)
    with Simulator(cfg) as sim:
        yield SimEnv(sim=sim, tmp=tmp_path, lake_uri=lake_uri)


def expected_groups(sim: Simulator) -> dict[tuple[int, str], dict[str, Any]]:
    out = {}
    for t in sim.dataset.group_types():
        for g in sim.dataset.iter_groups(t["group_type_index"]):
            out[(g["group_type_index"], g["group_key"])] = g
    return out


def landed_groups(env: SimEnv) -> dict[tuple[int, str], dict[str, Any]]:
    rows = env.query(
        "SELECT group_type_index, group_key, group_properties::VARCHAR, "
        "strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f') FROM posthog.groups"
    )
    return {(i, k): {"group_properties": json.loads(p) if p is not None else None, "created_at": c}
            for i, k, p, c in rows}


def read_stored(lake_root: Path | str, stored_path: str) -> bytes:
    """An archived file's bytes, from a local or S3 lake (never outside it)."""
    location = Location.parse(str(lake_root))
    assert ".." not in stored_path.split("/") and not stored_path.startswith("/"), stored_path
    if location.is_local:
        path = (Path(location.uri) / stored_path).resolve()
        assert path.is_relative_to(Path(location.uri).resolve()), f"{stored_path} outside"
        return path.read_bytes()
    with location.filesystem.open_input_stream(
            location.fs_path(location.join(stored_path))) as fh:
        return fh.read()


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message and its causes, as the run log shows them."""
    texts = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.event_specific_data.error
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)


def exact_json(text: str | bytes | None) -> Any:
    """JSON text read for a semantic comparison: every number exact (non-integers as Decimal, so
    2^53 + 1 and 1e-7 are compared as written, whatever the spelling), key order kept (objects as
    lists of pairs), NaN/Infinity as their literal. None (SQL NULL) stays None."""
    if text is None:
        return None
    return json.loads(text, parse_float=Decimal, parse_constant=lambda c: ("constant", c),
                      object_pairs_hook=list)


def exact_json_of(value: Any) -> Any:
    """`exact_json` of a Python JSON value (what the simulator holds); None stays None."""
    if value is None:
        return None
    return exact_json(json.dumps(value, ensure_ascii=False))


def expected_export_rows(content: bytes, fmt: str) -> list[dict]:
    """What posthog.export_rows must hold for these bytes: parsed independently of the asset."""
    if fmt == "application/x-ndjson":  # one row per JSON Lines record
        return [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
    if fmt == "application/json":  # one row per element of an array, else the document
        document = json.loads(content)
        return document if isinstance(document, list) else [document]
    if fmt == CSV_FORMAT:
        rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    else:
        from assets.tabular import _cell_text

        wb = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
        rows = []
        for values in wb.worksheets[0].iter_rows(values_only=True):
            cells = [_cell_text(v) for v in values]
            while cells and cells[-1] is None:
                cells.pop()
            if cells:
                rows.append(cells)
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    return [dict(zip(header, r + [None] * (len(header) - len(r)), strict=False)) for r in body]
