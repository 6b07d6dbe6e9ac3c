"""The floor: one bare httpx loop that downloads every page and every export content once and
discards it (no retries, no budget, no parsing beyond reading `next`, no writing).

    python -m benchmarks.floor --host http://127.0.0.1:PORT --project-id 1 --api-key phx_...
"""
from __future__ import annotations

import argparse
import json

import httpx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--project-id", default="1")
    p.add_argument("--api-key", required=True)
    a = p.parse_args(argv)
    base = f"{a.host}/api/projects/{a.project_id}/"
    auth = {"Authorization": f"Bearer {a.api_key}"}
    pages = contents = nbytes = 0
    with httpx.Client(timeout=60) as http:
        types = http.get(base + "groups_types/", headers=auth).raise_for_status().json()
        for t in types:
            url: str | None = f"{base}groups/?group_type_index={t['group_type_index']}"
            while url:
                body = json.loads(http.get(url, headers=auth).raise_for_status().content)
                pages += 1
                url = body["next"]
        url = base + "exports/?limit=100"
        exports = []
        while url:
            body = http.get(url, headers=auth).raise_for_status().json()
            exports += [e["id"] for e in body["results"] if e.get("has_content")]
            url = body["next"]
        for export_id in exports:
            r = http.get(f"{base}exports/{export_id}/content/", headers=auth)
            if r.status_code == 302:  # to storage, without our Authorization
                r = http.get(r.headers["Location"])
            if r.status_code == 200:
                contents += 1
                nbytes += len(r.content)
    print(json.dumps({"group_pages": pages, "contents": contents, "content_bytes": nbytes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
