"""The reviewer's view end to end: two pipeline runs on the embedded defaults (the second with a
strategy that fails), the pages served by uvicorn on 127.0.0.1 and read in Debian's chromium, plus
the executed commander notebook of a normal run checked for what a reader should never see."""
from __future__ import annotations

import json
import re

import nbformat
import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By

from lib.seed import seed
from lib.web import records, viewer
from tests.browser import Server, chromium
from tests.pipeline_env import PipelineEnv


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    env = PipelineEnv.embedded(tmp)
    bus = env.bus()
    seed(bus)
    normal = env.run()
    assert normal.exit_code == 0, normal.message
    bus.update("strategies/dummy", {"capital_allocation": 0.15})
    bus.set("strategies/flaky", {"name": "flaky", "enabled": True, "capital_allocation": 0.05,
                                 "notebook": "tests/notebooks/raising_strategy.ipynb"})
    failing = env.run()
    assert failing.execution_id and failing.record, failing.message
    settings = {"COMMANDER_BUS": env.settings.bus, "COMMANDER_BROKER": env.settings.broker,
                "COMMANDER_AUDIT": env.settings.audit}
    server = Server(settings, tmp / "web.log")
    yield {"env": env, "normal": normal, "failing": failing, "server": server, "settings": settings}
    server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def client(world, monkeypatch):
    for k, v in world["settings"].items():
        monkeypatch.setenv(k, v)
    import main
    return TestClient(main.app, base_url="http://127.0.0.1")


def test_reviewer_clicks_from_runs_to_the_commander_notebook(world, browser):
    failing = world["failing"]
    browser.get(world["server"].url + "/runs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert len(rows) == 2 and failing.execution_id in rows[0].text  # newest first
    assert "flaky: error" in rows[0].text and "none" in rows[1].text
    assert rows[0].find_element(By.CSS_SELECTOR, "a.failed-notebook").get_attribute("href").endswith("_flaky.ipynb")

    rows[0].find_element(By.CSS_SELECTOR, "a.execution-link").click()
    assert failing.execution_id in browser.find_element(By.TAG_NAME, "h1").text
    # The orders the broker received, as the page shows them.
    shown = [tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td")[:3])
             for tr in browser.find_elements(By.CSS_SELECTOR, "#orders tr.order")]
    expected = [(o["action"], f"{o['totalQuantity']:,}", o["symbol"]) for o in failing.record["orders_placed"]]
    assert shown == expected and shown
    # The fill: price and commission, as the broker reported them.
    first = failing.record["orders_placed"][0]
    assert first["commission"] > 0
    row = browser.find_elements(By.CSS_SELECTOR, "#orders tr.order")[0].text
    assert f"{first['avgFillPrice']:,.4f}" in row and f"{first['commission']:,.2f}" in row
    skipped = browser.find_element(By.ID, "skipped").text
    assert "flaky" in skipped and "error" in skipped and "market data vendor is down" in skipped
    notebooks = {a.text: a for a in browser.find_elements(By.CSS_SELECTOR, "a.notebook-link")}
    assert len(notebooks) == 6

    notebooks[next(n for n in notebooks if n.endswith("commander.ipynb"))].click()
    text = browser.find_element(By.TAG_NAME, "main").text
    assert failing.record["summary"] in text
    assert "skipped: " in text and "flaky (error" in text and "market data vendor is down" in text
    assert not browser.find_elements(By.ID, "error-banner")
    browser.back()

    browser.find_element(By.PARTIAL_LINK_TEXT, "flaky.ipynb").click()
    banner = browser.find_element(By.ID, "error-banner").text
    assert "RuntimeError: market data vendor is down" in banner
    # The banner is the first thing on the page, above the notebook.
    assert browser.find_element(By.CSS_SELECTOR, "main > *:nth-child(2)").get_attribute("id") == "error-banner"
    browser.find_element(By.ID, "toggle-inputs").click()
    assert "inputs=hide" in browser.current_url
    hidden = browser.find_element(By.TAG_NAME, "main").text
    assert "from lib.notebook import Context" not in hidden and "market data vendor is down" in hidden


def test_diff_names_the_strategy_that_moved(world, browser):
    failing = world["failing"]
    browser.get(f"{world['server'].url}/executions/{failing.execution_id}/diff")
    table = browser.find_element(By.ID, "diff").text
    assert "STK:GLD:USD" in table and "dummy" in table and "new intent" in table
    assert "flaky: ok → error" in browser.find_element(By.ID, "strategy-status").text


def test_commander_notebook_of_a_normal_run_reads_well(world):
    link = world["normal"].record["notebooks"][-1]
    assert link.endswith("commander.ipynb")
    nb = nbformat.read(link, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    texts = []
    for o in outputs:
        data = o.get("data", {})
        texts += [data.get("text/plain", ""), data.get("text/html", ""), data.get("text/markdown", ""), o.get("text", "")]
    blob = "\n".join(t if isinstance(t, str) else "".join(t) for t in texts)
    assert not [o for o in outputs if o.output_type == "error"]
    assert "dtype:" not in blob and "NaN" not in blob and "None" not in blob
    for html in (o.get("data", {}).get("text/html", "") for o in outputs):
        if "<table" in html:
            assert "<td" in html, "an empty table"
            headers = re.findall(r"<th[^>]*>([^<]*)</th>", html)
            cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
            width = len(headers)
            for i, name in enumerate(headers):  # no column empty in every row
                assert any(cells[j].strip() for j in range(i, len(cells), width)), f"column {name} is empty"
    first = next(o for o in outputs if "text/markdown" in o.get("data", {}))
    assert first["data"]["text/markdown"].startswith("**Completed.** Placed")
    assert "No strategy skipped." in blob and "No working order cancelled." in blob
    assert re.search(r"\b1,0\d\d\b", blob)  # quantities with thousands separators


def test_runs_filters_and_paging(client, world):
    failing, normal = world["failing"], world["normal"]
    page = client.get("/runs", params={"strategy": "flaky"}).text
    assert failing.execution_id in page and normal.execution_id not in page
    page = client.get("/runs", params={"limit": 1}).text
    assert failing.execution_id in page and normal.execution_id not in page
    older = re.search(r'id="older" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert normal.execution_id in client.get(older).text
    assert "No execution matches" in client.get("/runs", params={"date_to": "2020-01-01"}).text
    assert "No execution matches" in client.get("/runs", params={"status": "awaiting_approval"}).text
    assert client.get("/runs", params={"date_from": "yesterday"}).status_code == 400


def test_notebooks_outside_the_store_and_traversal_are_refused(client, world, tmp_path):
    for bad in ("../bus.sqlite", "..%2Fbus.sqlite", "a/../../x.ipynb", "%2Fetc%2Fpasswd", "x.txt"):
        res = client.get(f"/notebooks/{bad}")
        assert res.status_code in (403, 404) and "root:" not in res.text, bad
    audit = world["settings"]["COMMANDER_AUDIT"]
    with pytest.raises(viewer.NotInAuditStore):
        viewer.store_name("/etc/passwd", audit)
    with pytest.raises(viewer.NotInAuditStore):
        viewer.store_name(f"{audit}/../bus.sqlite", audit)
    with pytest.raises(viewer.NotInAuditStore):
        viewer.store_name("gs://other-bucket/x.ipynb", "gs://audit/prefix")
    assert viewer.store_name("gs://audit/prefix/2026-11-20/r/01_a.ipynb", "gs://audit/prefix") == "2026-11-20/r/01_a.ipynb"
    # A record pointing outside the store gets no link on its page.
    bus = world["env"].bus()
    rec = dict(world["normal"].record, execution_id="20200101T000000Z-bad", notebooks=["/etc/passwd.ipynb"])
    rec["executed_at"] = rec["executed_at"].replace(year=2020) if hasattr(rec["executed_at"], "replace") else rec["executed_at"]
    bus.set("executions/20200101T000000Z-bad", rec)
    page = client.get("/executions/20200101T000000Z-bad").text
    assert "/notebooks//etc" not in page and "outside the audit store" in page
    bus.delete("executions/20200101T000000Z-bad")


def test_untrusted_notebook_output_is_sanitized(client, world):
    root = world["settings"]["COMMANDER_AUDIT"]
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("evil()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": '<script>alert(1)</script><img src="x" onerror="alert(2)"><a href="javascript:alert(3)">x</a>'
                     '<iframe src="https://evil.example"></iframe><b>kept</b>',
        "text/plain": "x"})]
    nb.cells = [cell]
    import pathlib
    path = pathlib.Path(root) / "evil" / "01_evil.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    body = client.get("/notebooks/evil/01_evil.ipynb").text
    main = body[body.index('<div class="nb">'):]
    assert "<b>kept</b>" in main
    for bad in ("<script", "onerror", "javascript:", "<iframe"):
        assert bad not in main, bad


def test_pages_show_no_setting(client, world):
    failing = world["failing"]
    for url in ("/runs", f"/executions/{failing.execution_id}", "/strategies", "/strategies/flaky",
                "/notebooks/" + viewer.store_name(failing.record["notebooks"][-1], world["settings"]["COMMANDER_AUDIT"])):
        res = client.get(url)
        assert res.status_code == 200, url
        for value in (world["env"].settings.bus, world["env"].settings.broker):  # the actual settings
            assert value not in res.text and value.split(":///")[1] not in res.text, url


def test_strategy_page_shows_status_history(client, world):
    page = client.get("/strategies/flaky").text
    assert "market data vendor is down" in page and world["failing"].execution_id in page
    assert re.search(r'href="/notebooks/[^"]+_flaky\.ipynb"', page)
    assert client.get("/strategies/nope").status_code == 404
    history = records.strategy_history([world["failing"].record, world["normal"].record], "dummy")
    assert [h["status"] for h in history] == ["ok", "ok"] and history[0]["targets"]
