"""Where the market data store keeps its files: a local folder or gs://BUCKET/PREFIX.

The interface is small on purpose: read a file with a version token, write one only if its version is
still the expected one (compare-and-swap), list, lock. Locally a write is a temporary file in the same
folder, fsync and an atomic rename, under an exclusive file lock (flock) that the store holds for the
whole read-change-write; on GCS it is one upload with an `if_generation_match` precondition (0 for a
file that must not exist yet), so a concurrent writer makes the second write fail instead of losing
the first.
"""
from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

from lib.errors import PipelineError

PARQUET_TYPE = "application/vnd.apache.parquet"


class DataError(PipelineError):
    """The market data store refused or failed an operation; the message names the file."""


class ConflictError(DataError):
    """A compare-and-swap write found another version than the one it read: nothing was written."""


class Files(abc.ABC):
    url: str

    @abc.abstractmethod
    def link(self, name: str) -> str:
        """Where `name` (e.g. 'daily/SPY.parquet') is kept: a path or gs://BUCKET/OBJECT."""

    @abc.abstractmethod
    def read(self, name: str) -> tuple[bytes, Any] | None:
        """The file's bytes and its version token, or None when it does not exist."""

    @abc.abstractmethod
    def write(self, name: str, data: bytes, expect: Any) -> Any:
        """Replace `name` by `data` only if its version is still `expect` (None: only if it does not
        exist); returns the new version. Raises ConflictError otherwise (nothing written)."""

    @abc.abstractmethod
    def list(self, folder: str) -> list[str]:
        """Names of the files directly in `folder` (e.g. 'daily')."""

    def lock(self, name: str) -> contextlib.AbstractContextManager:
        """Exclusive access to `name` across processes where the backend has it; a no-op where the
        write's precondition alone keeps it safe (GCS)."""
        return contextlib.nullcontext()


class LocalFiles(Files):
    """A folder (default runs/data/). Versions are (inode, mtime_ns, size): every write is a new file
    renamed over the old one, so the inode changes."""

    LOCK_TIMEOUT = 600.0

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.url = str(self.root).rstrip("/") + "/"

    def link(self, name: str) -> str:
        return str(self.root / name)

    @staticmethod
    def _version(stat: os.stat_result) -> tuple[int, int, int]:
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def read(self, name: str) -> tuple[bytes, Any] | None:
        path = self.root / name
        try:
            with open(path, "rb") as fh:
                return fh.read(), self._version(os.fstat(fh.fileno()))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None

    def _current(self, path: Path) -> Any:
        try:
            return self._version(path.stat())
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes, expect: Any) -> Any:
        path = self.root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create {path.parent}: {exc.strerror}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if self._current(path) != expect:  # the caller holds lock(name): only a writer without it gets here
                raise ConflictError(f"{path} changed since it was read; nothing written")
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never a part
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):  # the rename itself survives a power cut once the folder is synced
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        return self._current(path)

    def list(self, folder: str) -> list[str]:
        path = self.root / folder
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """flock on `.locks/<name>.lock` beside the data: processes (and threads) updating one file
        take turns; the lock goes with the process if it dies."""
        path = self.root / ".locks" / f"{name}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + self.LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DataError(f"{self.link(name)} stayed locked by another process for "
                                        f"{self.LOCK_TIMEOUT:.0f} s ({path})") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class GcsFiles(Files):
    """gs://BUCKET/PREFIX through google-cloud-storage (honours STORAGE_EMULATOR_HOST). Versions are
    object generations."""

    def __init__(self, url: str):
        rest = url[len("gs://"):]
        self.bucket_name, _, prefix = rest.partition("/")
        if not self.bucket_name:
            raise ValueError(f"data URL {url!r} names no bucket; expected gs://BUCKET/PREFIX/data/")
        self.prefix = prefix.strip("/")
        self.url = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/") + "/"
        from google.cloud import storage
        kwargs = {}
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials
            kwargs = {"credentials": AnonymousCredentials(), "project": os.environ.get("GOOGLE_CLOUD_PROJECT", "local")}
        self._bucket = storage.Client(**kwargs).bucket(self.bucket_name)

    def _object(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def link(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._object(name)}"

    def read(self, name: str) -> tuple[bytes, Any] | None:
        from google.api_core import exceptions as gexc
        for _ in range(5):  # replaced between the metadata and the download: read again
            try:
                blob = self._bucket.get_blob(self._object(name))
                if blob is None:
                    return None
                return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
            except (gexc.PreconditionFailed, gexc.NotFound):
                continue
            except gexc.GoogleAPIError as exc:
                raise DataError(f"cannot read {self.link(name)}: {exc}") from exc
        raise DataError(f"cannot read {self.link(name)}: it kept changing while being read")

    def write(self, name: str, data: bytes, expect: Any) -> Any:
        from google.api_core import exceptions as gexc
        blob = self._bucket.blob(self._object(name))
        try:
            blob.upload_from_string(data, content_type=PARQUET_TYPE, if_generation_match=expect or 0)
        except gexc.PreconditionFailed:
            raise ConflictError(f"{self.link(name)} changed since it was read; nothing written") from None
        except gexc.GoogleAPIError as exc:
            raise DataError(f"cannot write {self.link(name)}: {exc}") from exc
        return blob.generation

    def list(self, folder: str) -> list[str]:
        from google.api_core import exceptions as gexc
        prefix = self._object(folder).rstrip("/") + "/"
        try:
            names = [b.name[len(prefix):] for b in self._bucket.list_blobs(prefix=prefix)]
        except gexc.GoogleAPIError as exc:
            raise DataError(f"cannot list {self.link(folder)}: {exc}") from exc
        return sorted(n for n in names if n and "/" not in n)


def open_files(url: str) -> Files:
    """`runs/data/` (any local folder) or `gs://BUCKET/PREFIX/data/`."""
    if url.startswith("gs://"):
        return GcsFiles(url)
    if "://" in url:
        raise ValueError(f"unknown data URL {url!r}; expected a local folder like runs/data/ or gs://BUCKET/PREFIX/data/")
    return LocalFiles(url)
