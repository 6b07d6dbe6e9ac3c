"""Deterministic export content builders (CSV, XLSX, PNG, video, PDF, GIF, JSON)."""
from __future__ import annotations

import csv
import io
import json
import random
import re
import struct
import zipfile
import zlib
from typing import Iterator

CSV = "text/csv"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PNG = "image/png"
PDF = "application/pdf"
WEBM = "video/webm"
MP4 = "video/mp4"
GIF = "image/gif"
JSON_FMT = "application/json"
JSONL = "application/x-ndjson"

FORMAT_EXT = {
    PNG: "png",
    PDF: "pdf",
    CSV: "csv",
    XLSX: "xlsx",
    WEBM: "webm",
    MP4: "mp4",
    GIF: "gif",
    JSON_FMT: "json",
    JSONL: "jsonl",
}
VIDEO_FORMATS = (WEBM, MP4, GIF)

_WORDS = [
    "alpha", "beta", "gamma", "delta", "signup", "pageview", "checkout", "billing", "onboarding",
    "Zürich", "São Paulo", "Kraków", "東京", "北京", "Ünïcödé", "naïve café", "emoji 🚀", "👍🏽 ok",
]
_COLUMN_POOL = [
    "event", "person.distinct_id", "timestamp", "properties.$browser", "count()", "uniq(person_id)",
    "properties.$current_url", "revenue", "is_identified", "cohort", "notes", "country",
]


def _sanitize(value: str) -> str:
    # PostHog's csv exporter guards against formula injection
    if value and value[0] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _cell(rng: random.Random, col: str, row: int):
    kind = rng.random()
    if col in ("count()", "uniq(person_id)"):
        return rng.randint(0, 10_000_000)
    if col == "revenue":
        return round(rng.uniform(-100, 100000), 2)
    if col == "is_identified":
        return rng.choice([True, False])
    if col == "timestamp":
        return f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    if kind < 0.08:
        return 'has "quotes", and, commas'
    if kind < 0.14:
        return "multi\nline\nvalue"
    if kind < 0.18:
        return _sanitize("=HYPERLINK(\"http://evil\")")
    if kind < 0.22:
        return ""
    return f"{rng.choice(_WORDS)} {row}"


def build_csv(seed: int, export_id: int, rows: int | None = None) -> bytes:
    rng = random.Random(f"csv:{seed}:{export_id}")
    ncols = rng.randint(2, 8)
    cols = rng.sample(_COLUMN_POOL, ncols)
    if rows is None:
        rows = rng.randint(5, 200) if rng.random() < 0.85 else rng.randint(2000, 8000)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in range(rows):
        w.writerow({c: _cell(rng, c, r) for c in cols})
    return buf.getvalue().encode("utf-8")


_FIXED_ZIP_DATE = (2026, 1, 1, 0, 0, 0)


def build_xlsx(seed: int, export_id: int) -> bytes:
    import datetime

    import openpyxl

    rng = random.Random(f"xlsx:{seed}:{export_id}")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Export"
    ncols = rng.randint(2, 6)
    cols = rng.sample(_COLUMN_POOL, ncols)
    ws.append(cols)
    for r in range(rng.randint(5, 150)):
        row = []
        for c in cols:
            v = _cell(rng, c, r)
            row.append(v if not isinstance(v, bool) else str(v).lower())
        ws.append(row)
    fixed = datetime.datetime(2026, 1, 1, 0, 0, 0)
    wb.properties.created = fixed
    raw = io.BytesIO()
    wb.save(raw)
    # normalise: openpyxl stamps "modified" with now() and zip entries with the current time
    src = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              rb"\g<1>2026-01-01T00:00:00Z\g<2>", data)
            zi = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_DATE)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = info.external_attr
            dst.writestr(zi, data)
    return out.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def build_png(seed: int, export_id: int) -> bytes:
    rng = random.Random(f"png:{seed}:{export_id}")
    w, h = rng.randint(16, 160), rng.randint(16, 120)
    r0, g0, b0 = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    rows = bytearray()
    for y in range(h):
        rows.append(0)  # filter type none
        for x in range(w):
            rows += bytes(((r0 + x * 3) & 255, (g0 + y * 5) & 255, (b0 + x + y) & 255))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + _png_chunk(b"IEND", b""))


def _noise(seed_str: str, n: int) -> bytes:
    return random.Random(seed_str).randbytes(n)


def build_video(seed: int, export_id: int, fmt: str) -> bytes:
    body = _noise(f"video:{seed}:{export_id}", 20_000 + (export_id % 7) * 1000)
    if fmt == MP4:
        ftyp = b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2avc1mp41"
        return struct.pack(">I", len(ftyp) + 4) + ftyp + struct.pack(">I", len(body) + 8) + b"mdat" + body
    if fmt == GIF:
        return (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
                b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
    return b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x86\x81\x01\x42\x82\x84webm" + body


def build_pdf(seed: int, export_id: int) -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
            b"trailer<</Root 1 0 R>>\n%%EOF\n")


def build_json(seed: int, export_id: int) -> bytes:
    rng = random.Random(f"json:{seed}:{export_id}")
    return json.dumps({"results": [{"x": rng.randint(0, 100), "y": rng.random()} for _ in range(20)]}).encode()


def build_jsonl(seed: int, export_id: int) -> bytes:
    """A dataset export: one JSON object per line (dataset items: input, output, metadata)."""
    rng = random.Random(f"jsonl:{seed}:{export_id}")
    lines = []
    for i in range(12):
        item = {"id": f"item-{export_id}-{i}", "input": {"question": f"q{rng.randint(0, 999)}"},
                "output": {"answer": "\u00e9t\u00e9" if i % 5 == 0 else f"a{rng.random():.4f}"},
                "metadata": {"row": i}}
        lines.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8")


def build_content(seed: int, export_id: int, fmt: str) -> bytes:
    if fmt == CSV:
        return build_csv(seed, export_id)
    if fmt == XLSX:
        return build_xlsx(seed, export_id)
    if fmt == PNG:
        return build_png(seed, export_id)
    if fmt in VIDEO_FORMATS:
        return build_video(seed, export_id, fmt)
    if fmt == PDF:
        return build_pdf(seed, export_id)
    if fmt == JSONL:
        return build_jsonl(seed, export_id)
    return build_json(seed, export_id)


class LargeCsv:
    """A big CSV of fixed-width rows, generated in chunks (never fully materialised)."""

    HEADER = b"row_id,group_key,value,comment\n"
    ROW_LEN = 100

    def __init__(self, seed: int, export_id: int, target_bytes: int = 60 * 1024 * 1024):
        self.seed = seed
        self.export_id = export_id
        self.rows = (target_bytes - len(self.HEADER)) // self.ROW_LEN + 1
        self.length = len(self.HEADER) + self.rows * self.ROW_LEN

    def _row(self, i: int) -> bytes:
        h = (i * 0x9E3779B97F4A7C15 + self.seed * 0xBF58476D1CE4E5B9 + self.export_id) & 0xFFFFFFFFFFFFFFFF
        prefix = f'{i:010d},grp_{h:016x},{(h >> 20) % 1000000}.{h % 100:02d},"comment, with comma '
        pad = self.ROW_LEN - len(prefix) - 2
        return (prefix + "x" * pad + '"\n').encode("ascii")

    def iter_chunks(self, chunk_rows: int = 4096) -> Iterator[bytes]:
        yield self.HEADER
        for start in range(0, self.rows, chunk_rows):
            yield b"".join(self._row(i) for i in range(start, min(self.rows, start + chunk_rows)))
