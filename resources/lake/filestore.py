"""Archived export files: content-addressed under LAKE_ROOT, local or S3, sha256 verified.

A file is stored once under ``<schema>/export_files/sha256/<aa>/<bb>/<sha256>`` (its name is
its hash, so nothing from the API ever becomes part of a path) and never changes. Locally the
temp file is moved into place atomically; on S3 an object PUT is atomic by itself.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from resources.lake.errors import LakeError
from resources.lake.location import Location

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class FileStore:
    """Content-addressed files under the lake root."""

    def __init__(self, location: Location, schema: str) -> None:
        self.location = location
        self.schema = schema

    def stored_path(self, sha256: str) -> str:
        """The path relative to LAKE_ROOT where content with this sha256 is stored."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise LakeError(f"invalid sha256 {sha256!r}: need 64 lowercase hex characters")
        return f"{self.schema}/export_files/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def uri(self, stored_path: str) -> str:
        """The absolute path or URI of a stored file."""
        if stored_path.startswith("/") or ".." in stored_path.split("/"):
            raise LakeError(f"stored path {stored_path!r} is not inside the lake")
        return self.location.join(stored_path)

    def store(self, tmp_file: Path, sha256: str) -> str:
        """Put a fully written local temp file in place (removing the temp file); stored_path."""
        stored = self.stored_path(sha256)
        tmp_file = Path(tmp_file)
        if self.location.is_local:
            _store_local(tmp_file, Path(self.uri(stored)), sha256)
            return stored
        fs = self.location.filesystem
        target = self.location.fs_path(self.uri(stored))
        if fs.get_file_info(target).type != pafs.FileType.File:
            with tmp_file.open("rb") as src, fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        tmp_file.unlink(missing_ok=True)
        return stored

    def open(self, stored_path: str) -> BinaryIO:
        """A stored file, open for binary reading (seekable)."""
        uri = self.uri(stored_path)
        if self.location.is_local:
            return open(uri, "rb")
        return self.location.filesystem.open_input_file(self.location.fs_path(uri))

    def verify(self, stored_path: str, sha256: str, size: int) -> str | None:
        """None if the stored file has this sha256 and size, else what is wrong."""
        digest = hashlib.sha256()
        read = 0
        try:
            with self.open(stored_path) as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
        except (OSError, FileNotFoundError) as exc:
            return f"{stored_path}: {getattr(exc, 'strerror', None) or exc}"
        if digest.hexdigest() != sha256 or read != size:
            return f"{stored_path} does not match its sha256/size"
        return None


def _store_local(tmp_file: Path, path: Path, sha256: str) -> None:
    if path.exists():
        tmp_file.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp_file, "rb") as f:
        os.fsync(f.fileno())
    try:
        os.replace(tmp_file, path)
    except OSError as e:
        if e.errno != errno.EXDEV:  # the temp file lives on another filesystem
            raise
        staged = path.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
        shutil.copyfile(tmp_file, staged)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, path)
        tmp_file.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
