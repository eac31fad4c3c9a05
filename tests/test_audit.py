"""The audit store: runs/ locally, GCS through fake-gcs-server."""
from __future__ import annotations

import pytest

from lib.audit import AuditError, open_audit


def test_local_store_is_create_only(tmp_path):
    store = open_audit(str(tmp_path / "runs"))
    src = tmp_path / "nb.ipynb"
    src.write_text('{"cells": []}')
    link = store.put_file(src, "2025-10-29/run/01_x.ipynb", {"run_id": "run"})
    assert (tmp_path / "runs/2025-10-29/run/01_x.ipynb").read_text() == '{"cells": []}'
    with pytest.raises(AuditError, match="never overwritten"):
        store.put_file(src, "2025-10-29/run/01_x.ipynb", {})
    assert link.endswith("01_x.ipynb")


def test_gcs_upload_once_with_type_and_metadata(gcs_bucket, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    store = open_audit(f"gs://{gcs_bucket}/audit/prod")
    src = tmp_path / "nb.ipynb"
    src.write_text('{"cells": [], "nbformat": 4}')
    link = store.put_file(src, "2025-10-29/R1/05_commander.ipynb",
                          {"run_id": "R1", "stage": "commander", "status": "ok", "git_revision": "abc"})
    assert link == f"gs://{gcs_bucket}/audit/prod/2025-10-29/R1/05_commander.ipynb"
    blob = storage.Client(credentials=AnonymousCredentials(), project="local").bucket(gcs_bucket) \
        .get_blob("audit/prod/2025-10-29/R1/05_commander.ipynb")
    assert blob.content_type == "application/x-ipynb+json"
    assert blob.metadata == {"run_id": "R1", "stage": "commander", "status": "ok", "git_revision": "abc"}
    assert blob.download_as_bytes() == src.read_bytes()
    src.write_text("tampered")
    with pytest.raises(AuditError, match="never overwritten"):
        store.put_file(src, "2025-10-29/R1/05_commander.ipynb", {})
    assert blob.reload() is None and blob.download_as_bytes() != b"tampered"


def test_unknown_audit_url():
    with pytest.raises(ValueError, match="unknown audit URL"):
        open_audit("s3://bucket")
