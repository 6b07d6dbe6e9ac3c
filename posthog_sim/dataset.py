"""Deterministic, lazy PostHog dataset: group types, groups, property definitions, exports.

Groups are never materialised. The group at API sort position ``p`` (0 = first in
``created_at DESC, group_key DESC`` order) is computed from ``(seed, type, p)``.
Positions are grouped into "ties" that share one ``created_at`` (pattern of sizes 3,1,2 repeating);
within a tie keys descend, so the keyset order is consistent. ``created_at`` strictly decreases from
tie to tie, so a cursor ``(c, k)`` can be located with a binary search over positions.

Runtime-inserted groups (and the hostile groups) live in a small sorted *overlay* that is merged
into listing order.
"""
from __future__ import annotations

import bisect
import datetime as _dt
import hashlib
import heapq
import json
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import content as C
from .config import DatasetSpec

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

# tie pattern: sizes 3, 1, 2 repeating every 6 positions
_TIE_OF = (0, 0, 0, 1, 2, 2)
_J_OF = (0, 1, 2, 0, 0, 1)
_TIE_START = (0, 3, 4)  # offset within the 6-block where tie 0,1,2 start
_TIE_SIZE = (3, 1, 2)

TIE_STEP_US = 37_000_000  # ~37 s between ties
BASE_TIME = _dt.datetime(2026, 8, 1, tzinfo=_dt.timezone.utc)


def iso_us(us: int) -> str:
    """DRF style ISO-8601: microseconds only when non-zero, 'Z' suffix."""
    return (_EPOCH + _dt.timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def listed_us(us: int) -> int:
    """A created_at as the groups listing carries it: milliseconds (`.589000Z`).

    groups/ reads ClickHouse, whose groups table keeps created_at to the millisecond (a
    DateTime64(3)); groups/find reads Postgres, which keeps the microseconds. The listing's
    order and its cursor are on the millisecond value (ee/clickhouse/views/groups.py encodes
    `last.created_at` of the listed group), so the cursor stays exact."""
    return us - us % 1000


def iso_s(ts: float) -> str:
    return iso_us(int(round(ts * 1_000_000)))


def _top20(items) -> list[tuple[str, int]]:
    """count DESC, value ASC, LIMIT 20 (the property_values query's ORDER BY)."""
    return heapq.nsmallest(20, items, key=lambda nc: (-nc[1], nc[0]))


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class _Rng(random.Random):
    """Deterministic per-object PRNG (Mersenne Twister in C; seeding is ~2 us)."""

    def next(self) -> int:
        return self.getrandbits(64)

    def below(self, n: int) -> int:
        return int(self.random() * n)

    def chance(self, pct: int) -> bool:
        return self.random() * 100 < pct

    def pick(self, seq):
        return seq[int(self.random() * len(seq))]

    def unit(self) -> float:
        return self.random()


_INV53 = 1.0 / (1 << 53)


def _lcg(state: int):
    """Fast per-object uniform [0,1) generator (64-bit LCG, top 53 bits)."""
    x = state & M64

    def rnd() -> float:
        nonlocal x
        x = (x * 6364136223846793005 + 1442695040888963407) & M64
        return (x >> 11) * _INV53

    return rnd


# ---------------------------------------------------------------- 32-bit bijection (for keys)
_ODD1 = 0x85EBCA6B
_ODD2 = 0xC2B2AE35
_INV1 = pow(_ODD1, -1, 1 << 32)
_INV2 = pow(_ODD2, -1, 1 << 32)


def _unxorshift(x: int, s: int) -> int:
    r = x
    sh = s
    while sh < 32:
        r ^= x >> sh
        sh += s
    return r & M32


def _perm(t: int, salt: int) -> int:
    x = (t ^ salt) & M32
    x = (x * _ODD1) & M32
    x ^= x >> 16
    x = (x * _ODD2) & M32
    x ^= x >> 13
    return x


def _perm_inv(x: int, salt: int) -> int:
    x = _unxorshift(x, 13)
    x = (x * _INV2) & M32
    x = _unxorshift(x, 16)
    x = (x * _INV1) & M32
    return (x ^ salt) & M32


# ---------------------------------------------------------------- group types
_TYPE_TEMPLATES = [
    {"group_type": "organization", "name_singular": "Organization", "name_plural": "Organizations",
     "detail_dashboard": 12, "default_columns": ["name", "industry", "employees"],
     "created_at": "2024-03-14T09:26:53.589793Z"},
    {"group_type": "company", "name_singular": None, "name_plural": None, "detail_dashboard": None,
     "default_columns": None, "created_at": "2024-06-01T00:00:00Z"},
    {"group_type": "project", "name_singular": "Project", "name_plural": None, "detail_dashboard": None,
     "default_columns": ["name"], "created_at": None},
    {"group_type": "team", "name_singular": "Team", "name_plural": "Teams", "detail_dashboard": 31,
     "default_columns": None, "created_at": "2025-01-20T17:03:11.000412Z"},
    {"group_type": "instance", "name_singular": None, "name_plural": "Instances", "detail_dashboard": None,
     "default_columns": ["name", "region"], "created_at": "2025-11-02T08:00:00Z"},
]

_KEY_WORDS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "cyberdyne",
              "soylent", "aperture", "vandelay", "pied-piper", "monsters", "oscorp"]

_NAME_A = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell", "Cyberdyne",
           "Société Générale", "Müller & Söhne", "株式会社テスト", "北京科技", "Café Olé", "Ωmega", "🚀 Rocket",
           "O'Reilly", 'The "Best" Co', "Zoë's Bakery"]
_NAME_B = ["Inc", "GmbH", "Ltd", "LLC", "S.A.", "KK", "AG", "Labs", "Group", "BV"]
_INDUSTRIES = ["technology", "finance", "healthcare", "retail", "education", "manufacturing", "media",
               "logistics", "energy", "agriculture", "government", "non-profit", "gaming", "travel",
               "real estate", "telecom", "insurance", "legal", "biotech", "automotive", "aerospace",
               "hospitality", "sports", "fashion"]
_PLANS = ["free", "startup", "scale", "enterprise", "paid", "trial"]
_REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "eu-west-1", "ap-southeast-1", "sa-east-1"]
_TAGS = ["beta", "vip", "churn-risk", "partner", "internal", "édu", "中文", "🔥hot", "needs,comma", 'q"uote']
_CITIES = ["Berlin", "São Paulo", "東京", "New York", "Zürich", "Kraków", "Reykjavík", "Montréal"]
_LONG_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "ñandú", "日本語"]

_LONG_TEXT = " ".join(_LONG_WORDS[(i * 7 + i // 3) % len(_LONG_WORDS)] for i in range(2000))

# (key, kind, presence %) -- "name" is always first
_PROP_POOL: list[tuple[str, str, int]] = [
    ("name", "name", 100),
    ("industry", "industry", 85),
    ("employees", "int", 75),
    ("arr_usd", "float", 60),
    ("is_paying", "bool", 90),
    ("signup_date", "datetime", 70),
    ("plan", "plan", 80),
    ("tags", "array", 50),
    ("address", "object", 45),
    ("description", "longstr", 35),
    ("external_id_big", "bigint", 40),
    ("display_name_i18n", "unicode", 55),
    ("churned_at", "nullish", 50),
    ("seats", "int", 65),
    ("region", "region", 70),
    ("settings", "object", 30),
    ("score", "float", 55),
    ("domain", "domain", 60),
]


def _prop_type(kind: str) -> tuple[str | None, bool]:
    if kind in ("int", "float", "bigint"):
        return "Numeric", True
    if kind == "bool":
        return "Boolean", False
    if kind in ("datetime", "nullish"):
        return "DateTime", False
    if kind in ("array", "object", "mixed"):
        return None, False
    return "String", False


def _prop_keys_for_type(idx: int, n: int) -> list[tuple[str, str, int]]:
    rest = _PROP_POOL[1:]
    rot = (idx * 5) % len(rest)
    rest = rest[rot:] + rest[:rot]
    keys = [_PROP_POOL[0]] + rest
    if n <= len(keys):
        return keys[:max(1, n)]
    extra = [(f"custom_field_{i}", ("str", "int", "bool")[i % 3], 20 + (i * 13) % 60) for i in range(n - len(keys))]
    return keys + extra


# ---------------------------------------------------------------- exports
_DASHBOARDS = {1: "Example dashboard", 2: "Growth KPIs", 3: "Revenue 2026", 4: "Product — Onboarding",
               5: "Team überblick"}
_INSIGHTS = {101: "Weekly signups", 102: "Retention cohorts", 103: "Funnel: checkout", 104: "DAU/WAU",
             105: "Revenue by plan", 106: "Trends 🚀"}
_QUERIES = [
    "select event, count() from events group by event order by count() desc limit 100",
    "select properties.$browser, uniq(person_id) from events where timestamp > now() - interval 7 day group by 1",
    "select * from groups where index = 0 limit 5000",
    "select distinct_id, properties.email from persons limit 1000",
]
_EXT_BY_FORMAT = C.FORMAT_EXT
_SEVEN_DAYS = 7 * 86400
_SIX_MONTHS = 180 * 86400
_TWELVE_MONTHS = 365 * 86400
STUCK_THRESHOLD_S = 600 + 30
STUCK_MESSAGE = ("Export failed without throwing an exception. Please try to rerun this export and contact "
                 "support if it fails to complete multiple times.")
PDF_EXCEPTION = "NotImplementedError: Export to format application/pdf is not supported for insights"


def expiry_delta(fmt: str) -> int:
    if fmt in (C.CSV, C.XLSX, C.JSONL):
        return _SEVEN_DAYS
    if fmt in (C.MP4, C.WEBM, C.GIF):
        return _TWELVE_MONTHS
    return _SIX_MONTHS


def midnight(ts: float) -> float:
    d = _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def slugify(s: str) -> str:
    s = re.sub(r"[^\w\s-]", "", s.lower(), flags=re.UNICODE)
    return re.sub(r"[-\s]+", "-", s).strip("-_")


@dataclass
class ExportRecord:
    id: int
    user_id: int
    export_format: str
    created_at: float
    dashboard: int | None
    insight: int | None
    export_context: Any
    filename: str
    expires_after: float | None
    has_content: bool
    exception: str | None
    role: str = "normal"
    polls: int = 0
    expired_override: bool = False
    extra_fields: dict = field(default_factory=dict)
    missing_fields: tuple = ()
    large: bool = False


# ---------------------------------------------------------------- value generators: fn(rnd, p, key)
def _g_name(rnd, p, key):
    return f"{_NAME_A[int(rnd() * len(_NAME_A))]} {_NAME_B[int(rnd() * len(_NAME_B))]} {p}"


def _g_industry(rnd, p, key):
    n = len(_INDUSTRIES)
    return _INDUSTRIES[int(rnd() * rnd() * n)]  # skewed towards the head


def _g_plan(rnd, p, key):
    return _PLANS[int(rnd() * rnd() * len(_PLANS))]


def _g_region(rnd, p, key):
    return _REGIONS[int(rnd() * len(_REGIONS))]


def _g_int(rnd, p, key):
    v = int(rnd() * 5000)
    return None if v < 100 else v


def _g_float(rnd, p, key):
    return round(rnd() * 1_000_000, 4) if rnd() < 0.9 else -0.5


def _g_bool(rnd, p, key):
    return rnd() < 0.4


def _g_datetime(rnd, p, key):
    x = int(rnd() * 7 * 12 * 28 * 24)
    d, x = divmod(x, 7 * 12 * 28)
    return f"20{20 + x % 7}-{x // 7 % 12 + 1:02d}-{x // 84 + 1:02d}T{d:02d}:00:00Z"


def _g_nullish(rnd, p, key):
    return None if rnd() < 0.7 else f"2026-0{int(rnd() * 9) + 1}-15T12:00:00Z"


def _g_array(rnd, p, key):
    return [_TAGS[int(rnd() * len(_TAGS))] for _ in range(int(rnd() * 4))]


def _g_object(rnd, p, key):
    return {"city": _CITIES[int(rnd() * len(_CITIES))], "zip": f"{int(rnd() * 99999):05d}",
            "geo": {"lat": round(rnd() * 180 - 90, 6), "lon": round(rnd() * 360 - 180, 6)},
            "verified": rnd() < 0.5, "note": None}


def _g_longstr(rnd, p, key):
    n = 2100 + int(rnd() * 1500) if rnd() < 0.3 else 40 + int(rnd() * 300)
    off = int(rnd() * (len(_LONG_TEXT) - 4000))
    return _LONG_TEXT[off:off + n].strip()


def _g_bigint(rnd, p, key):
    if rnd() < 0.6:
        return (1 << 63) + int(rnd() * (1 << 52)) * 1021 + p
    return int(rnd() * (1 << 31))


_UNICODE_NAMES = ["Ünïcödé Gmbh", "東京の会社", "Компания", "شركة", "🎉 Party Co 🎊", "naïve — résumé", "Ελληνικά",
                  "한국어 회사"]


def _g_unicode(rnd, p, key):
    return _UNICODE_NAMES[int(rnd() * len(_UNICODE_NAMES))]


def _g_domain(rnd, p, key):
    return f"{key.split(':')[0][:20].lower().replace('/', '')}.example.com"


def _g_str(rnd, p, key):
    return f"value-{int(rnd() * 50)}"


_GEN = {"name": _g_name, "industry": _g_industry, "plan": _g_plan, "region": _g_region, "int": _g_int,
        "float": _g_float, "bool": _g_bool, "datetime": _g_datetime, "nullish": _g_nullish, "array": _g_array,
        "object": _g_object, "longstr": _g_longstr, "bigint": _g_bigint, "unicode": _g_unicode,
        "domain": _g_domain, "str": _g_str}



def property_value_text(value: Any) -> str:
    """A property value as groups/property_values names it: its JSON text, the enclosing quotes
    of a string trimmed (ClickHouse's `replaceRegexpAll(JSONExtractRaw(...), '^"|"$', '')`)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if text.startswith('"'):
        text = text[1:]
    if text.endswith('"'):
        text = text[:-1]
    return text

class Dataset:
    def __init__(self, spec: DatasetSpec, now: float | None = None, team_id: int = 1):
        self.spec = spec
        self.team_id = int(team_id)  # the project (team) these rows belong to
        self.seed = int(spec.seed)
        self.start_time = time.time() if now is None else float(now)
        self._lock = threading.RLock()
        self.n_types = len(spec.groups_per_type)
        self._n = list(spec.groups_per_type)
        self._salt = [_mix64(self.seed * 31 + i) & M32 for i in range(self.n_types)]
        base = int(BASE_TIME.timestamp()) - (self.seed % 997) * 3600
        self._t0_us = base * 1_000_000
        self._deleted_types: set[int] = set()
        self._prop_keys = [_prop_keys_for_type(i, spec.property_keys_per_type) for i in range(self.n_types)]
        self._compiled = [[(name, presence / 100.0, _GEN[kind]) for name, kind, presence in keys]
                          for keys in self._prop_keys]
        # overlay: per type sorted list of (created_us, key) ascending + dict key -> group
        self._ov_sorted: list[list[tuple[int, str]]] = [[] for _ in range(self.n_types)]
        self._ov: list[dict[str, dict]] = [{} for _ in range(self.n_types)]
        self._ov_extra_keys: list[dict[str, str]] = [{} for _ in range(self.n_types)]
        self._pv_cache: dict[int, dict[str, dict[str, int]]] = {}
        self._pv_top: dict[int, tuple[dict, dict[str, list[tuple[str, int]]]]] = {}
        self._notebooks: dict[tuple[int, str], str] = {}  # groups/find makes them
        self._pv_lock = threading.Lock()
        self._content_cache: OrderedDict[int, bytes] = OrderedDict()
        self._content_cache_bytes = 0
        self._content_cache_limit = 64 * 1024 * 1024
        self._insert_clock_us = 0
        self.version = 0  # bumped on every mutation of the group data
        if spec.hostile:
            self._add_hostile_groups()
        self._exports: dict[int, ExportRecord] = {}
        self._build_exports()
        self._next_export_id = max(self._exports, default=0) + 1
        self.explicit_members: list[dict] = self._build_members()

    # ------------------------------------------------------------ group types
    def group_types(self) -> list[dict]:
        out = []
        for i in range(self.n_types):
            if i in self._deleted_types:
                continue
            t = dict(_TYPE_TEMPLATES[i])
            out.append({"group_type": t["group_type"], "group_type_index": i,
                        "name_singular": t["name_singular"], "name_plural": t["name_plural"],
                        "detail_dashboard": t["detail_dashboard"], "default_columns": t["default_columns"],
                        "created_at": t["created_at"]})
        return out

    def delete_group_type(self, idx: int) -> bool:
        with self._lock:
            if not (0 <= idx < self.n_types) or idx in self._deleted_types:
                return False
            self._deleted_types.add(idx)
            self.version += 1
            return True

    def _valid_type(self, i: int) -> bool:
        return 0 <= i < self.n_types and i not in self._deleted_types

    # ------------------------------------------------------------ generated groups: position math
    def _tie(self, p: int) -> tuple[int, int]:
        b, r = divmod(p, 6)
        return b * 3 + _TIE_OF[r], _J_OF[r]

    def _tie_start(self, t: int) -> int:
        b, r = divmod(t, 3)
        return b * 6 + _TIE_START[r]

    def _created_us(self, i: int, t: int) -> int:
        h = _mix64((self.seed << 40) ^ (i << 36) ^ t)
        jitter = 0 if h % 7 == 0 else (h >> 8) % 30_000_000
        if h % 11 == 0:
            jitter -= jitter % 1000  # millisecond precision only
        return self._t0_us - t * TIE_STEP_US - jitter

    def _key(self, i: int, t: int, j: int) -> str:
        a = _perm(t, self._salt[i])
        style = i
        if style == 0:
            h = _mix64(a ^ (self.seed << 33))
            return (f"{a:08x}-{(h >> 48) & 0xFFFF:04x}-4{(h >> 36) & 0xFFF:03x}-"
                    f"{0x8000 | ((h >> 20) & 0x3FFF):04x}-{h & 0xFFFFFFFFFFF:011x}{2 - j}")
        if style == 1:
            return f"{_KEY_WORDS[a % len(_KEY_WORDS)]}-{a:x}-{2 - j}.io"
        if style == 2:
            return f"proj:{a}:{2 - j}"
        if style == 3:
            return f"{a}{2 - j}"
        return f"https://{_KEY_WORDS[a % len(_KEY_WORDS)]}-{a:x}.example.com/{2 - j}"

    _KEY_RES = [
        re.compile(r"^([0-9a-f]{8})-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{11}([0-2])$"),
        re.compile(r"^[a-z-]+-([0-9a-f]+)-([0-2])\.io$"),
        re.compile(r"^proj:([0-9]+):([0-2])$"),
        re.compile(r"^([0-9]+)([0-2])$"),
        re.compile(r"^https://[a-z-]+-([0-9a-f]+)\.example\.com/([0-2])$"),
    ]

    def _position_of_key(self, i: int, key: str) -> int | None:
        m = self._KEY_RES[i].match(key)
        if not m:
            return None
        a = int(m.group(1), 16 if i in (0, 1, 4) else 10)
        if a > M32:
            return None
        j = 2 - int(m.group(2))
        t = _perm_inv(a, self._salt[i])
        size = _TIE_SIZE[t % 3]
        if j >= size:
            return None
        p = self._tie_start(t) + j
        if p >= self._n[i] or self._key(i, t, j) != key:
            return None
        return p

    def _sort_key(self, i: int, p: int) -> tuple[int, str]:
        """A generated group's place in the listing: (its listed created_at, key); distinct ties
        are seconds apart, so the millisecond keeps the microsecond order."""
        t, j = self._tie(p)
        return listed_us(self._created_us(i, t)), self._key(i, t, j)

    def _gen_group(self, i: int, p: int, c: int | None = None, key: str | None = None) -> dict:
        if c is None or key is None:
            t, j = self._tie(p)
            c = self._created_us(i, t)
            key = self._key(i, t, j)
        return {"group_type_index": i, "group_key": key, "group_properties": self._gen_props(i, p, key),
                "created_at": iso_us(c)}

    def _gen_props(self, i: int, p: int, key: str) -> dict:
        rnd = _lcg(_mix64(((self.seed * 1_000_003 + i) << 32) ^ p))
        props: dict[str, Any] = {}
        for name, thr, fn in self._compiled[i]:
            if rnd() < thr:
                props[name] = fn(rnd, p, key)
        return props

    # ------------------------------------------------------------ overlay
    def insert_group(self, group_type_index: int, group_key: str, properties: dict | None = None,
                     created_at: Any = None, *, extra_fields: dict | None = None,
                     omit_fields: tuple = ()) -> dict:
        """Insert (or upsert) a group at runtime. created_at: None (now), epoch seconds, datetime or ISO str."""
        i = int(group_type_index)
        if not 0 <= i < self.n_types:
            raise ValueError(f"group_type_index {i} out of range")
        with self._lock:
            if created_at is None:
                now_us = int(time.time() * 1_000_000)
                top = self._t0_us + 1_000_000
                self._insert_clock_us = max(now_us, top, self._insert_clock_us + 1)
                c = self._insert_clock_us
            elif isinstance(created_at, (int, float)):
                c = int(round(created_at * 1_000_000))
            elif isinstance(created_at, _dt.datetime):
                d = created_at if created_at.tzinfo else created_at.replace(tzinfo=_dt.timezone.utc)
                c = (d - _EPOCH) // _dt.timedelta(microseconds=1)
            else:
                d = _dt.datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
                if d.tzinfo is None:
                    d = d.replace(tzinfo=_dt.timezone.utc)
                c = (d - _EPOCH) // _dt.timedelta(microseconds=1)
            existing = self._ov[i].get(group_key)
            if existing is not None:
                # upsert: keep original created_at
                existing["group_properties"] = dict(properties or {})
                self._pv_cache.pop(i, None)
                self.version += 1
                return dict(existing)
            if self._position_of_key(i, group_key) is not None:
                raise ValueError(f"group {group_key!r} already exists in type {i}")
            g = self._insert_raw(i, group_key, dict(properties or {}), c, extra_fields, omit_fields)
            self.version += 1
            self._pv_cache.pop(i, None)
            return _public(g)

    def _add_hostile_groups(self) -> None:
        r = _Rng(_mix64(self.seed ^ 0xBADBAD))
        hostile_keys = [
            'quote"inside', "it's", "'; DROP TABLE groups; --", "line1\nline2", "tab\tseparated",
            "back\\slash\\", "k" * 450, "ключ-🔑", "  padded  ", "../../etc/passwd", "%2e%2e%2f", "null",
            "a,b,c", "\u2028line-sep", "<script>alert(1)</script>", "Robert'); DROP TABLE students;--",
        ]
        hostile_props = [
            {'prop "quoted"': "v", "it's": 1, "new\nline": True, "tab\tkey": None, "back\\slash": "x"},
            {"huge": "Z" * 100_000, "mixed_type": 42},
            {"mixed_type": "forty-two", "'; DROP TABLE groups; --": "sql"},
            {"mixed_type": {"nested": {"deeper": [1, 2, {"x": None}]}}},
            # the widest integers PostHog's renderer (orjson) writes; beyond them a page is a 500
            {"big": 2 ** 64 - 1, "neg_big": -(2 ** 63), "float": 1e-300, "emoji": "🧨💥", "nul": "a\u0000b"},
            {"sep": "\u2028\u2029", "ctrl": "\x01\x02\x7f", "empty": "", "empty_obj": {}, "empty_arr": []},
        ]
        for i in range(self.n_types):
            n = self._n[i]
            for idx, hk in enumerate(hostile_keys):
                props = dict(hostile_props[idx % len(hostile_props)])
                if n:
                    # place inside the generated range; every 3rd shares a created_at with a generated tie
                    p = (r.below(n))
                    t, _ = self._tie(p)
                    c = self._created_us(i, t) - (0 if idx % 3 == 0 else 1 + r.below(500_000))
                else:
                    c = self._t0_us - idx * 1_000_000
                extra = {"new_field_2027": {"source": "hostile", "v": idx}} if idx % 4 == 0 else None
                omit = ("group_properties",) if idx == 5 else ()
                self._insert_raw(i, hk, props, c, extra, omit)

    def _note_keys(self, i: int, props: dict) -> None:
        d = self._ov_extra_keys[i]
        for k, v in props.items():
            kind = _value_kind(v)
            if k in d and d[k] != kind and kind != "nullish":
                d[k] = "mixed" if d[k] != "nullish" else kind
            else:
                d.setdefault(k, kind)

    def _insert_raw(self, i, key, props, c, extra, omit) -> dict[str, Any]:
        """Put one group into the overlay (sorted by created_at, key); the caller holds the lock
        or is still building the dataset."""
        g: dict[str, Any] = {"group_type_index": i, "group_key": key, "group_properties": props,
                             "created_at": iso_us(c)}
        for f in omit:
            g.pop(f, None)
        if extra:
            g.update(extra)
        g["_c"] = c
        self._ov[i][key] = g
        bisect.insort(self._ov_sorted[i], (listed_us(c), key))
        self._note_keys(i, props)
        return g

    # ------------------------------------------------------------ listing
    def group_count(self, i: int) -> int:
        if not 0 <= i < self.n_types:
            return 0
        return self._n[i] + len(self._ov_sorted[i])

    def _gen_first_after(self, i: int, c: int, k: str) -> int:
        """First generated position whose (created, key) is strictly below (c, k)."""
        lo, hi = 0, self._n[i]
        while lo < hi:
            mid = (lo + hi) // 2
            if self._sort_key(i, mid) < (c, k):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _iter_from(self, i: int, cursor: tuple[int, str] | None) -> Iterator[tuple[int, str, Any]]:
        """Yield (created_us, key, ref) in API order starting strictly after cursor.
        ref is an int position (generated) or the overlay dict."""
        n = self._n[i]
        with self._lock:
            ov = list(self._ov_sorted[i])
            ovd = self._ov[i]
        if cursor is None:
            p = 0
            oi = len(ov) - 1
        else:
            p = self._gen_first_after(i, *cursor)
            oi = bisect.bisect_left(ov, cursor) - 1
        nxt_gen = self._sort_key(i, p) if p < n else None
        while True:
            ovk = ov[oi] if oi >= 0 else None
            if nxt_gen is None and ovk is None:
                return
            if ovk is None or (nxt_gen is not None and nxt_gen > ovk):
                yield nxt_gen[0], nxt_gen[1], p
                p += 1
                nxt_gen = self._sort_key(i, p) if p < n else None
            else:
                yield ovk[0], ovk[1], ovd[ovk[1]]
                oi -= 1

    def _materialise(self, i: int, ref, c: int | None = None, k: str | None = None) -> dict:
        """A group as the listing shows it (c: its listed created_at, in ms)."""
        if isinstance(ref, int):
            return self._gen_group(i, ref, c, k)
        g = _public(ref)
        if c is not None and "created_at" in g:
            g["created_at"] = iso_us(c)
        return g

    def iter_groups(self, group_type_index: int) -> Iterator[dict]:
        i = group_type_index
        if not 0 <= i < self.n_types:
            return iter(())
        return (self._materialise(i, ref, c, k) for c, k, ref in self._iter_from(i, None))

    def get_group(self, group_type_index: int, group_key: str) -> dict | None:
        i = group_type_index
        if not 0 <= i < self.n_types:
            return None
        g = self._ov[i].get(group_key)
        if g is not None:
            return _public(g)
        p = self._position_of_key(i, group_key)
        return None if p is None else self._gen_group(i, p)

    def group_notebook(self, group_type_index: int, group_key: str, *, create: bool) -> str | None:
        """The short id of a group's notebook, made now when `create` and it has none."""
        with self._lock:
            short = self._notebooks.get((group_type_index, group_key))
            if short is None and create:
                h = hashlib.sha256(f"notebook:{self.seed}:{group_type_index}:{group_key}".encode())
                short = self._notebooks[(group_type_index, group_key)] = h.hexdigest()[:8]
            return short

    def group_at(self, group_type_index: int, position: int) -> dict:
        """Generated group at a position, as the listing shows it (ignores the overlay)."""
        return self._gen_group(group_type_index, position, *self._sort_key(group_type_index, position))

    def list_groups(self, i: int, cursor: tuple[int, str] | None = None, search: str | None = None,
                    group_key: str | None = None, limit: int = 100) -> tuple[list[dict], tuple[int, str] | None]:
        """One page in API order. Returns (groups, next_cursor or None)."""
        out: list[dict] = []
        last = None
        if not 0 <= i < self.n_types:
            return out, None
        s = search.lower() if search else None
        gk = group_key.lower() if group_key else None
        for c, k, ref in self._iter_from(i, cursor):
            if gk is not None and gk not in k.lower():
                continue
            g = None
            if s is not None:
                if k.lower() != s:
                    g = self._materialise(i, ref, c, k)
                    # PostHog matches the properties' JSON text as ClickHouse holds it: compact
                    # (posthog/models/group/util.py list_groups, ILIKE on the properties column)
                    text = json.dumps(g.get("group_properties", {}), ensure_ascii=False, separators=(",", ":"))
                    if s not in text.lower():
                        continue
            if len(out) == limit:
                return out, last
            out.append(g if g is not None else self._materialise(i, ref, c, k))
            last = (c, k)
        return out, None

    # ------------------------------------------------------------ property definitions / values
    def _all_prop_kinds(self, i: int) -> dict[str, str]:
        kinds = {name: kind for name, kind, _ in self._prop_keys[i]}
        for k, kind in self._ov_extra_keys[i].items():
            if k in kinds:
                if kind != "nullish" and _prop_type(kinds[k])[0] != _prop_type(kind)[0]:
                    kinds[k] = "mixed"
            else:
                kinds[k] = kind
        return kinds

    def property_definitions(self, i: int) -> list[dict]:
        if not 0 <= i < self.n_types:
            return []
        out = []
        for name, kind in self._all_prop_kinds(i).items():
            ptype, numerical = _prop_type(kind)
            h = hashlib.sha256(f"{self.seed}:{i}:{name}".encode()).digest()
            upd = None if h[0] % 5 == 0 else iso_us(self._t0_us - (h[1] * 3600 + h[2]) * 1_000_000)
            out.append({"id": str(uuid.UUID(bytes=h[:16], version=4)), "name": name, "is_numerical": numerical,
                        "property_type": ptype, "tags": [], "is_seen_on_filtered_events": None,
                        "updated_at": upd, "verified": False})
        out.sort(key=lambda d: d["name"])
        return out

    # PostHog's groups/property_values (ee/clickhouse/views/groups.py, `property_values`) is one
    # HogQL query over raw_groups: each group's latest `properties[key]` (argMax by updated_at),
    # `WHERE value IS NOT NULL`, count(*) per value, `ORDER BY count DESC, value ASC LIMIT 20`.
    # HogQL reads a property of a JSON string column as ClickHouse's JSONExtractRaw with the outer
    # quotes trimmed (posthog/hogql/printer.py), so a value is its JSON text: a string loses only
    # its enclosing quotes and keeps its escapes (`The \"Best\" Co`), a number, boolean, array or
    # object stays JSON, a JSON null is no value. Counted over every group of the type.
    def _value_counts(self, i: int) -> dict[str, dict[str, int]]:
        with self._lock:
            cached = self._pv_cache.get(i)
        if cached is not None:
            return cached
        # one scan at a time: concurrent requests wait for the first one's counts instead of
        # each scanning the same groups (they would only share the GIL)
        with self._pv_lock:
            with self._lock:
                cached = self._pv_cache.get(i)
                version = self.version
            if cached is not None:
                return cached
            counts: dict[str, dict[str, int]] = {}
            for g in self.iter_groups(i):
                for k, v in (g.get("group_properties") or {}).items():
                    if v is None:
                        continue
                    sv = property_value_text(v)
                    d = counts.setdefault(k, {})
                    d[sv] = d.get(sv, 0) + 1
            with self._lock:
                if self.version == version:  # not if a write changed the groups meanwhile
                    self._pv_cache[i] = counts
            return counts

    def property_values(self, i: int, key: str, value: str | None = None) -> list[dict]:
        """Top 20 values of a property ({"name","count"}, count DESC, value ASC) over every group
        of the type, each value as PostHog's text (`property_value_text`)."""
        if not 0 <= i < self.n_types:
            return []
        counts = self._value_counts(i)
        if value:
            v = value.lower()
            items = [(n, c) for n, c in counts.get(key, {}).items() if v in n.lower()]
            return [{"name": n, "count": c} for n, c in _top20(items)]
        return [{"name": n, "count": c} for n, c in self._top_values(i, counts, key)]

    def _top_values(self, i: int, counts: dict[str, dict[str, int]], key: str
                    ) -> list[tuple[str, int]]:
        """A key's top 20, kept with the counts it came from (ClickHouse answers it in
        milliseconds; picking it from 300k distinct values in Python takes a tenth of a second)."""
        with self._lock:
            entry = self._pv_top.get(i)
            if entry is None or entry[0] is not counts:  # the counts were recomputed
                entry = self._pv_top[i] = (counts, {})
            top = entry[1].get(key)
        if top is None:
            top = _top20(counts.get(key, {}).items())
            with self._lock:
                entry[1][key] = top
        return top

    def legacy_property_definitions(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for i in range(self.n_types):
            counts = self._value_counts(i)
            rows = [(k, sum(v.values())) for k, v in counts.items()]
            # count includes null values in ClickHouse JSONExtractKeysAndValuesRaw; approximate with non-null
            rows.sort(key=lambda kc: (-kc[1], kc[0]))
            if rows:
                out[str(i)] = [{"name": k, "count": c} for k, c in rows]
        return out

    # ------------------------------------------------------------ exports
    def _build_exports(self) -> None:
        r = _Rng(_mix64(self.seed ^ 0xE4907))
        now = self.start_time
        specs: list[dict] = []
        roles_head = ["expired", "expiring_soon", "pdf_failed", "video", "pending", "xlsx", "png", "expiring_soon",
                      "expired", "pending", "video_mp4", "png_dashboard"]
        for n in range(self.spec.n_exports):
            role = roles_head[n] if n < len(roles_head) else None
            if role is None:
                x = r.below(100)
                role = ("csv" if x < 60 else "xlsx" if x < 75 else "png" if x < 88 else "png_dashboard" if x < 92
                        else "pdf_failed" if x < 95 else "video" if x < 98 else "csv_legacy_path")
            specs.append({"role": role, "user": 1, "r": _mix64(self.seed * 7919 + n)})
        for n in range(self.spec.other_user_exports):
            role = ("csv", "png", "video", "xlsx")[n % 4]
            specs.append({"role": role, "user": 2, "r": _mix64(self.seed * 104729 + n)})
        for n in range(self.spec.dataset_exports):
            specs.append({"role": "dataset_jsonl", "user": 1, "r": _mix64(self.seed * 7877 + n)})
        if self.spec.hostile:
            for n, fname in enumerate(["../../etc/passwd", "/abs/path.csv", "..\\..\\win.csv", "nul\x00byte.csv",
                                       "ctrl\x01\x1b[31mred\r\n.csv", "CON.csv", "   .csv"]):
                specs.append({"role": "hostile_name", "user": 1, "r": _mix64(self.seed * 31337 + n), "fname": fname,
                              "n": n})
            specs.append({"role": "large_csv", "user": 1, "r": _mix64(self.seed * 65537)})
        # choose created_at for each
        for s in specs:
            h = s["r"]
            role = s["role"]
            if role == "expired":
                s["created"] = now - 8 * 86400 - h % 86400
            elif role == "expiring_soon":
                exp = midnight(now) + 86400  # next midnight, <= 24h away
                s["created"] = min(exp - _SEVEN_DAYS + 60 + h % 3600, now - 60)
            elif role == "pending":
                s["created"] = now - 30 - h % 240
            elif role in ("csv", "xlsx", "csv_legacy_path", "hostile_name", "large_csv", "dataset_jsonl"):
                s["created"] = now - 3600 - h % (5 * 86400)
            else:
                s["created"] = now - 600 - h % (90 * 86400)
            s["created"] = int(s["created"]) + (h % 1_000_000) / 1e6 if h % 4 else float(int(s["created"]))
        specs.sort(key=lambda s: (s["created"], s["r"]))
        for idx, s in enumerate(specs):
            rec = self._make_export(idx + 1, s)
            self._exports[rec.id] = rec

    def _make_export(self, eid: int, s: dict) -> ExportRecord:
        role, h, created = s["role"], s["r"], s["created"]
        fmt = {"expired": C.CSV, "expiring_soon": C.CSV, "pdf_failed": C.PDF, "video": C.WEBM,
               "video_mp4": C.MP4, "pending": (C.CSV, C.PNG)[h % 2], "xlsx": C.XLSX, "png": C.PNG,
               "png_dashboard": C.PNG, "csv": C.CSV, "csv_legacy_path": C.CSV, "hostile_name": C.CSV,
               "large_csv": C.CSV, "dataset_jsonl": C.JSONL}[role]
        dashboard = insight = None
        ctx: Any = None
        name_for_file = None
        ctx_filename = None
        if fmt in (C.CSV, C.XLSX):
            if role == "csv_legacy_path":
                insight = list(_INSIGHTS)[h % len(_INSIGHTS)]
                ctx = {"path": f"/api/projects/1/insights/trend/?insight=TRENDS&events=%5B%5D&refresh=true"}
                name_for_file = _INSIGHTS[insight]
            else:
                ctx = {"source": {"kind": "HogQLQuery", "query": _QUERIES[h % len(_QUERIES)]}}
                if h % 3 == 0:
                    ctx_filename = ["weekly-signups", "Revenue Report Q3", "groups dump"][h % 9 // 3]
                    ctx["filename"] = ctx_filename
                if h % 5 == 0:
                    ctx["columns"] = ["event", "count()"]
        elif fmt == C.PNG:
            if role == "png_dashboard" or h % 2:
                dashboard = list(_DASHBOARDS)[h % len(_DASHBOARDS)]
                name_for_file = _DASHBOARDS[dashboard]
            else:
                insight = list(_INSIGHTS)[h % len(_INSIGHTS)]
                name_for_file = _INSIGHTS[insight]
        elif fmt == C.PDF:
            dashboard = list(_DASHBOARDS)[h % len(_DASHBOARDS)]
            name_for_file = _DASHBOARDS[dashboard]
        elif fmt == C.JSONL:
            # made by the datasets API with created_by the user, so it is listed; export_context
            # names the dataset (products/exports/backend/api/exports.py `content` reads
            # export_context["dataset_id"], a str)
            ctx = {"dataset_id": str(uuid.UUID(int=h, version=4))}
            ctx_filename = "dataset"
        else:  # video
            ctx = {"session_recording_id": str(uuid.UUID(int=h << 64 | (h >> 3), version=4)),
                   "timestamp": h % 600, "duration": 5 + h % 55, "mode": "video", "width": 1400, "height": 600}
        ts = _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
        ext = _EXT_BY_FORMAT[fmt]
        if role == "hostile_name":
            filename = s["fname"]
        elif ctx_filename:
            filename = f"{slugify(ctx_filename)}-{ts}.{ext}"
        elif name_for_file:
            filename = f"export-{slugify(name_for_file)}-{ts}.{ext}"
        else:
            filename = f"export-{ts}.{ext}"
        has_content = True
        exception = None
        if role == "pdf_failed":
            has_content, exception = False, PDF_EXCEPTION
        elif role in ("video", "video_mp4", "pending"):
            has_content = False
        rec = ExportRecord(id=eid, user_id=s["user"], export_format=fmt, created_at=created, dashboard=dashboard,
                           insight=insight, export_context=ctx, filename=filename,
                           expires_after=midnight(created + expiry_delta(fmt)), has_content=has_content,
                           exception=exception, role=role)
        if self.spec.hostile:
            if eid % 5 == 0 or role == "hostile_name":
                rec.extra_fields = {"new_field_2027": {"rollout": "beta", "id": eid}}
            if eid % 7 == 0:
                rec.missing_fields = ("user_access_level",)
            if role == "large_csv":
                rec.large = True
                rec.filename = f"huge-groups-dump-{ts}.csv"
        return rec

    def _is_expired(self, rec: ExportRecord, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return rec.expired_override or (rec.expires_after is not None and rec.expires_after < now)

    def _export_obj(self, rec: ExportRecord, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        exc = rec.exception
        if not rec.has_content and exc is None and rec.created_at < now - STUCK_THRESHOLD_S:
            exc = STUCK_MESSAGE
        obj = {"id": rec.id, "dashboard": rec.dashboard, "insight": rec.insight, "export_format": rec.export_format,
               "created_at": iso_s(rec.created_at), "has_content": rec.has_content,
               "export_context": rec.export_context, "filename": rec.filename,
               "expires_after": iso_s(rec.expires_after) if rec.expires_after is not None else None,
               "exception": exc, "user_access_level": "manager"}
        for f in rec.missing_fields:
            obj.pop(f, None)
        obj.update(rec.extra_fields)
        return obj

    def exports(self, user_id: int = 1) -> list[dict]:
        """Visible exports for a user in API order (-created_at)."""
        now = time.time()
        with self._lock:
            recs = [r for r in self._exports.values() if r.user_id == user_id and not self._is_expired(r, now)]
            recs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
            return [self._export_obj(r, now) for r in recs]

    def all_exports(self) -> list[dict]:
        now = time.time()
        with self._lock:
            out = []
            for r in sorted(self._exports.values(), key=lambda r: r.id):
                o = self._export_obj(r, now)
                o["_user_id"] = r.user_id
                o["_expired"] = self._is_expired(r, now)
                o["_role"] = r.role
                out.append(o)
            return out

    @staticmethod
    def is_dataset_export(rec: ExportRecord) -> bool:
        """A JSON Lines export made by the datasets API (its context names the dataset)."""
        ctx = rec.export_context
        return rec.export_format == C.JSONL and isinstance(ctx, dict) and "dataset_id" in ctx

    def export_record(self, export_id: int) -> ExportRecord | None:
        return self._exports.get(export_id)

    def get_export(self, export_id: int, user_id: int = 1) -> dict | None:
        with self._lock:
            rec = self._exports.get(export_id)
            if rec is None or self._is_expired(rec):
                return None
            if rec.user_id != user_id and not (isinstance(rec.export_context, dict)
                                                and rec.export_context.get("session_recording_id")):
                return None
            return self._export_obj(rec)

    def poll_export(self, export_id: int, polls_needed: int) -> None:
        """Count one poll (retrieve) of an export; videos get content after polls_needed polls."""
        with self._lock:
            rec = self._exports.get(export_id)
            if rec is None:
                return
            rec.polls += 1
            if (rec.export_format in C.VIDEO_FORMATS and not rec.has_content and rec.exception is None
                    and rec.polls >= polls_needed):
                rec.has_content = True

    def expire_export(self, export_id: int) -> None:
        with self._lock:
            self._exports[export_id].expired_override = True

    def set_export_state(self, export_id: int, has_content: bool | None = None, exception: Any = ...) -> None:
        with self._lock:
            rec = self._exports[export_id]
            if has_content is not None:
                rec.has_content = bool(has_content)
            if exception is not ...:
                rec.exception = exception

    def create_export(self, user_id: int, export_format: str, dashboard: int | None, insight: int | None,
                      export_context: Any) -> dict:
        now = time.time()
        with self._lock:
            eid = self._next_export_id
            self._next_export_id += 1
            name = None
            ctx_fn = export_context.get("filename") if isinstance(export_context, dict) else None
            if dashboard is not None:
                name = _DASHBOARDS.get(dashboard)
            elif insight is not None:
                name = _INSIGHTS.get(insight)
            ts = _dt.datetime.fromtimestamp(now, tz=_dt.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
            ext = _EXT_BY_FORMAT[export_format]
            if ctx_fn and isinstance(ctx_fn, str):
                filename = f"{slugify(ctx_fn)}-{ts}.{ext}"
            elif name:
                filename = f"export-{slugify(name)}-{ts}.{ext}"
            else:
                filename = f"export-{ts}.{ext}"
            has_content, exc = True, None
            if export_format == C.PDF:
                has_content, exc = False, PDF_EXCEPTION
            elif export_format in C.VIDEO_FORMATS:
                has_content = False
            else:
                src = export_context.get("source") if isinstance(export_context, dict) else None
                q = src.get("query") if isinstance(src, dict) else None
                if isinstance(q, str) and "throwerror" in q.lower():
                    has_content, exc = False, "HogQLException: Query failed: throwError called"
            rec = ExportRecord(id=eid, user_id=user_id, export_format=export_format, created_at=now,
                               dashboard=dashboard, insight=insight, export_context=export_context,
                               filename=filename, expires_after=midnight(now + expiry_delta(export_format)),
                               has_content=has_content, exception=exc, role="created")
            self._exports[eid] = rec
            return self._export_obj(rec, now)

    @staticmethod
    def dashboards() -> dict[int, str]:
        return dict(_DASHBOARDS)

    @staticmethod
    def insights() -> dict[int, str]:
        return dict(_INSIGHTS)

    # content
    def export_content_length(self, export_id: int) -> int | None:
        rec = self._exports.get(export_id)
        if rec is None or not rec.has_content:
            return None
        if rec.large:
            return C.LargeCsv(self.seed, export_id).length
        return len(self._content_bytes(rec))

    def _content_bytes(self, rec: ExportRecord) -> bytes:
        with self._lock:
            b = self._content_cache.get(rec.id)
            if b is not None:
                self._content_cache.move_to_end(rec.id)
                return b
        b = C.build_content(self.seed, rec.id, rec.export_format)
        with self._lock:
            if rec.id not in self._content_cache:
                self._content_cache[rec.id] = b
                self._content_cache_bytes += len(b)
                while self._content_cache_bytes > self._content_cache_limit and len(self._content_cache) > 1:
                    _, old = self._content_cache.popitem(last=False)
                    self._content_cache_bytes -= len(old)
        return b

    def precompute_property_values(self) -> None:
        """Count every type's property values now (PostHog answers property_values from
        ClickHouse; the simulator otherwise scans every group of a type in Python
        on the first request, seconds that no real server spends)."""
        for i in range(self.n_types):
            counts = self._value_counts(i)
            for key in counts:
                self._top_values(i, counts, key)

    def prerender_contents(self) -> int:
        """Render every (non-streamed) export file now and keep them all; returns the bytes."""
        with self._lock:
            self._content_cache_limit = 1 << 62
            records = [r for r in self._exports.values() if r.has_content and not r.large]
        return sum(len(self._content_bytes(r)) for r in records)

    def export_content_iter(self, export_id: int, chunk_size: int = 256 * 1024) -> Iterator[bytes] | None:
        rec = self._exports.get(export_id)
        if rec is None or not rec.has_content:
            return None
        if rec.large:
            return C.LargeCsv(self.seed, export_id).iter_chunks()
        b = self._content_bytes(rec)
        return (b[o:o + chunk_size] for o in range(0, max(len(b), 1), chunk_size)) if b else iter(())

    def export_content(self, export_id: int) -> bytes | None:
        """The stored bytes of an export (ignores expiry), None when there is no content."""
        it = self.export_content_iter(export_id)
        return None if it is None else b"".join(it)

    def export_content_sha256(self, export_id: int) -> str | None:
        it = self.export_content_iter(export_id)
        if it is None:
            return None
        h = hashlib.sha256()
        for chunk in it:
            h.update(chunk)
        return h.hexdigest()

    def export_storage_key(self, export_id: int) -> str:
        rec = self._exports[export_id]
        u = uuid.UUID(bytes=hashlib.sha256(f"{self.seed}:{export_id}".encode()).digest()[:16], version=4)
        return f"exports/{_EXT_BY_FORMAT[rec.export_format]}/team-{self.team_id}/task-{export_id}/{u}"

    # ------------------------------------------------------------ explicit members (legacy mode)
    def _build_members(self) -> list[dict]:
        out = []
        people = [("Ada", "Lovelace", 8, 15), ("Grace", "Hopper", 1, 8), ("Linus", "Torvalds", 1, 1),
                  ("Zoë", "Ångström", 8, 1)]
        for n, (fn, ln, level, parent) in enumerate(people):
            h = hashlib.sha256(f"member:{self.seed}:{n}".encode()).digest()
            uid = n + 2
            out.append({
                "id": str(uuid.UUID(bytes=h[:16], version=4)),
                "level": level, "parent_level": parent,
                "parent_membership_id": str(uuid.UUID(bytes=h[16:32], version=4)),
                "joined_at": iso_us(self._t0_us - (n + 1) * 86400 * 1_000_000),
                "updated_at": iso_us(self._t0_us - n * 3600 * 1_000_000),
                "user": {"id": uid, "uuid": str(uuid.UUID(bytes=hashlib.md5(f"user:{self.seed}:{uid}".encode()).digest(),
                                                           version=4)),
                         "distinct_id": f"distinct-{h.hex()[:16]}", "first_name": fn, "last_name": ln,
                         "email": f"{fn.lower()}.{ln.lower()}@example.com", "is_email_verified": n % 2 == 0,
                         "hedgehog_config": None, "role_at_organization": ["engineering", "product", None, "data"][n]},
                "effective_level": max(level, parent),
            })
        return out

    def delete_member(self, user_uuid: str) -> bool:
        with self._lock:
            for n, m in enumerate(self.explicit_members):
                if m["user"]["uuid"] == user_uuid:
                    del self.explicit_members[n]
                    return True
            return False


def _public(g: dict) -> dict:
    return {k: v for k, v in g.items() if k != "_c"}


def _value_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, (dict, list)):
        return "object"
    if v is None:
        return "nullish"
    return "str"
