"""pytest fixtures for the S3 test server (tests/s3_server.py): `s3_server` (one SeaweedFS per
session, started on first use) and `s3_bucket` (a fresh, empty bucket per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.s3_server import S3Server


@dataclass(frozen=True)
class S3Bucket:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    server: S3Server

    def env(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
        AWS_ALLOW_HTTP=true: as environment variables or as deltalake storage_options."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ALLOW_HTTP": "true",
        }

    def uri(self, *parts: str) -> str:
        """s3://<bucket>/<parts joined by '/'>"""
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(name)
    return S3Bucket(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key, region=s3_server.region, bucket=name,
                    server=s3_server)
