"""The audit store: where executed notebooks (and spilled execution inputs) are kept, unchanged.

`runs/` (a local folder, the default) or `gs://BUCKET/PREFIX` (Google Cloud Storage). Notebooks are
executed to a local file first and stored once: papermill never writes gs:// itself (it re-uploads
many times and, with gcsfs against an emulator, hangs).
"""
from __future__ import annotations

import abc
import os
import shutil
from pathlib import Path

from lib.errors import PipelineError

NOTEBOOK_TYPE = "application/x-ipynb+json"


class AuditError(PipelineError):
    """The audit store refused or failed a write."""


class AuditStore(abc.ABC):
    url: str

    @abc.abstractmethod
    def link(self, name: str) -> str:
        """Where `name` (a relative path like '2025-10-29/RUN/01_dummy.ipynb') is or will be kept."""

    @abc.abstractmethod
    def put_file(self, local: Path, name: str, metadata: dict[str, str], content_type: str = NOTEBOOK_TYPE) -> str:
        """Store a local file under `name`, create-only; returns its link."""

    @abc.abstractmethod
    def put_bytes(self, name: str, data: bytes, metadata: dict[str, str] | None = None,
                  content_type: str = "application/json") -> str:
        """Store bytes under `name`, create-only; returns its link."""

    def local_dir(self, name: str) -> Path | None:
        """A folder papermill may execute into directly (local stores), else None."""
        return None

    @abc.abstractmethod
    def read(self, name: str) -> tuple[bytes, dict[str, str]] | None:
        """What is kept under `name` and its metadata ({} where the store keeps none), or None."""


class LocalAudit(AuditStore):
    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)
        self.url = str(self.root).rstrip("/") + "/"

    def link(self, name: str) -> str:
        return str(self.root / name)

    def local_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, name: str) -> tuple[bytes, dict[str, str]] | None:
        try:
            return (self.root / name).read_bytes(), {}
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read {self.root / name}: {exc.strerror}") from None

    def put_file(self, local: Path, name: str, metadata: dict[str, str], content_type: str = NOTEBOOK_TYPE) -> str:
        target = self.root / name
        if Path(local).resolve() == target.resolve():
            return str(target)  # executed in place
        if target.exists():
            raise AuditError(f"{target} already exists; audit files are never overwritten")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        return str(target)

    def put_bytes(self, name: str, data: bytes, metadata: dict[str, str] | None = None,
                  content_type: str = "application/json") -> str:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            if target.read_bytes() != data:
                raise AuditError(f"{target} already exists with other content") from None
        return str(target)


class GcsAudit(AuditStore):
    """gs://BUCKET/PREFIX through google-cloud-storage (honours STORAGE_EMULATOR_HOST)."""

    def __init__(self, url: str):
        rest = url[len("gs://"):]
        self.bucket_name, _, prefix = rest.partition("/")
        if not self.bucket_name:
            raise ValueError(f"audit URL {url!r} names no bucket; expected gs://BUCKET/PREFIX")
        self.prefix = prefix.strip("/")
        self.url = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/") + "/"
        from google.cloud import storage
        kwargs = {}
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials
            kwargs = {"credentials": AnonymousCredentials(), "project": os.environ.get("GOOGLE_CLOUD_PROJECT", "local")}
        self._client = storage.Client(**kwargs)
        self._bucket = self._client.bucket(self.bucket_name)

    def _object(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def link(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._object(name)}"

    def read(self, name: str) -> tuple[bytes, dict[str, str]] | None:
        from google.api_core import exceptions as gexc
        try:
            blob = self._bucket.get_blob(self._object(name))
            return None if blob is None else (blob.download_as_bytes(), dict(blob.metadata or {}))
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as exc:
            raise AuditError(f"cannot read {self.link(name)}: {exc}") from exc

    def _upload(self, name: str, upload, metadata: dict[str, str] | None) -> str:
        from google.api_core import exceptions as gexc
        blob = self._bucket.blob(self._object(name))
        blob.metadata = dict(metadata or {})
        try:
            upload(blob)  # if_generation_match=0: create-only, never overwrite an audit file
        except gexc.PreconditionFailed:
            raise AuditError(f"{self.link(name)} already exists; audit files are never overwritten") from None
        except gexc.GoogleAPIError as exc:
            raise AuditError(f"upload to {self.link(name)} failed: {exc}") from exc
        return self.link(name)

    def put_file(self, local: Path, name: str, metadata: dict[str, str], content_type: str = NOTEBOOK_TYPE) -> str:
        return self._upload(name, lambda b: b.upload_from_filename(
            str(local), content_type=content_type, if_generation_match=0), metadata)

    def put_bytes(self, name: str, data: bytes, metadata: dict[str, str] | None = None,
                  content_type: str = "application/json") -> str:
        return self._upload(name, lambda b: b.upload_from_string(
            data, content_type=content_type, if_generation_match=0), metadata)


def read_link(link: str) -> bytes:
    """The bytes behind a link this module returned (a local path or gs://BUCKET/OBJECT)."""
    if link.startswith("gs://"):
        bucket, _, name = link[len("gs://"):].partition("/")
        store = GcsAudit(f"gs://{bucket}")
        try:
            return store._bucket.blob(name).download_as_bytes()
        except Exception as exc:
            raise AuditError(f"cannot read {link}: {exc}") from exc
    try:
        return Path(link).read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read {link}: {exc.strerror}") from None


def open_audit(url: str) -> AuditStore:
    """`runs/` or any local folder, or `gs://BUCKET/PREFIX`."""
    if url.startswith("gs://"):
        return GcsAudit(url)
    if "://" in url:
        raise ValueError(f"unknown audit URL {url!r}; expected a local folder like runs/ or gs://BUCKET/PREFIX")
    return LocalAudit(url)
