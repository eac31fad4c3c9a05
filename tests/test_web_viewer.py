"""The notebook viewer reads executed notebooks from GCS too (fake-gcs-server), and only there."""
from __future__ import annotations

import nbformat
import pytest

from lib.audit import GcsAudit
from lib.web import viewer


def _failed_notebook(path):
    nb = nbformat.v4.new_notebook()
    ok = nbformat.v4.new_code_cell("x = 1", execution_count=1)
    bad = nbformat.v4.new_code_cell("raise ValueError('no bars')", execution_count=2)
    bad.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="no bars", traceback=["ValueError: no bars"])]
    nb.cells = [ok, bad]
    nbformat.write(nb, path)


def test_viewer_reads_from_gcs_and_shows_the_failure(gcs_bucket, tmp_path):
    store = GcsAudit(f"gs://{gcs_bucket}/audit")
    local = tmp_path / "nb.ipynb"
    _failed_notebook(local)
    link = store.put_file(local, "2026-11-20/run1/01_s.ipynb", {"stage": "strategy s"})
    name = viewer.store_name(link, store.url)
    assert name == "2026-11-20/run1/01_s.ipynb"
    nb = viewer.read(store.url, name)
    failure = viewer.failure(nb)
    assert (failure.cell, failure.ename, failure.evalue) == (2, "ValueError", "no bars")
    html = viewer.to_html(nb, show_inputs=False)
    assert "no bars" in html and "x = 1" not in html
    with pytest.raises(FileNotFoundError):
        viewer.read(store.url, "2026-11-20/run1/02_missing.ipynb")
    with pytest.raises(viewer.NotInAuditStore):
        viewer.read(store.url, "../other/01_s.ipynb")
    with pytest.raises(viewer.NotInAuditStore):
        viewer.store_name(f"gs://{gcs_bucket}/elsewhere/01_s.ipynb", store.url)


def test_runs_query_reads_bounded_pages(tmp_path):
    """However selective the filter, one request reads at most max_scan records."""
    import datetime as dt

    from lib.bus import open_bus
    from lib.web import records
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.sqlite'}")
    t0 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    for i in range(30):
        at = t0 + dt.timedelta(hours=i)
        bus.set(f"executions/e{i:02d}", {"execution_id": f"e{i:02d}", "executed_at": at, "mode": "paper",
                                         "status": "failed" if i == 3 else "completed", "decision": {}})
    page = records.find(bus, records.Filters(status="failed"), limit=5, max_scan=12)
    assert page.rows == [] and page.scanned == 12 and page.exhausted_scan and page.next_before is not None
    rest = records.find(bus, records.Filters(status="failed"), limit=5, before=page.next_before, max_scan=50)
    assert [r["id"] for r in rest.rows] == ["e03"] and rest.next_before is None
    day = records.find(bus, records.Filters(date_from=dt.date(2026, 11, 3), date_to=dt.date(2026, 11, 3)), limit=50)
    assert [r["id"] for r in day.rows] == [f"e{i:02d}" for i in range(29, 23, -1)]
