"""`python -m lib.data`: update, list, show, import and import-examples, as a user types them."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lib.data import open_store
from lib.data.__main__ import main
from tests.pipeline_env import ROOT


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDER_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COMMANDER_BROKER", f"sim:///{tmp_path / 'sim.sqlite'}")
    monkeypatch.setenv("COMMANDER_BUS", f"sqlite:///{tmp_path / 'bus.sqlite'}")
    return tmp_path / "data"


def test_update_then_show_says_synthetic(data, capsys):
    assert main(["update", "--symbols", "spy", "vixy", "--as-of", "2026-11-20"]) == 0
    out = capsys.readouterr().out
    assert "2/2 series up to 2026-11-20, 2 request(s)" in out and "SYNTHETIC" in out
    assert main(["update", "--symbols", "SPY"]) == 0  # again: the last session only
    assert "1 request(s) for 1 session(s)" in capsys.readouterr().out
    assert main(["show", "SPY", "--rows", "3"]) == 0
    out = capsys.readouterr().out
    assert "sim (SYNTHETIC" in out and "… 2026-11-20" in out and "2026-11-19" in out and "volume" in out
    assert main(["list"]) == 0
    assert capsys.readouterr().out.count("SYNTHETIC") == 2


def test_update_without_symbols_takes_the_strategies_universes(data, capsys):
    from lib.bus import open_bus
    from lib.seed import seed
    with open_bus(f"sqlite:///{data.parent / 'bus.sqlite'}") as bus:
        seed(bus)
    assert main(["update", "--as-of", "2026-11-20"]) == 0
    assert open_store(str(data)).symbols() == ["GLD", "SPY", "TLT", "VIXY"]


def test_update_reports_a_failing_symbol_and_exits_1(data, capsys):
    assert main(["update", "--symbols", "NOSUCH", "GLD", "--as-of", "2026-11-20"]) == 1
    out = capsys.readouterr().out
    assert "NOSUCH   FAILED" in out and "GLD      ok" in out


def test_import_a_csv_then_show_it(data, tmp_path, capsys):
    csv = tmp_path / "acme.csv"
    csv.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n"
                   "2024-01-02,10,11,9,10.5,10.0,1000\n2024-01-03,10.5,12,10,11.5,11.0,2000\n")
    assert main(["import", str(csv), "--symbol", "ACME"]) == 0
    series = open_store(str(data)).read("ACME")
    assert series.source == "import:acme.csv" and series.bars["adj_close"].tolist() == [10.0, 11.0]
    assert main(["show", "ACME"]) == 0
    out = capsys.readouterr().out
    assert "import:acme.csv, with adjusted close" in out and "SYNTHETIC" not in out

    bad = tmp_path / "bad.csv"
    bad.write_text("date,close\n2024-01-02,ten\n")
    assert main(["import", str(bad), "--symbol", "BAD"]) == 1
    assert f"{bad}: column 'close', row 2: 'ten' is not a number" in capsys.readouterr().err
    assert main(["update", "--symbols", "ACME", "--as-of", "2026-11-20"]) == 1  # a broker never extends an import
    assert main(["import", str(csv), "--symbol", "ACME"]) == 0  # the same file again: replaced
    assert main(["show", "NOPE"]) == 1


def test_import_examples_reads_skfolios_real_closes_without_importing_it(data, capsys):
    done = subprocess.run([sys.executable, "-m", "lib.data", "import-examples"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "close-only" in done.stdout and "BSD-3-Clause" in done.stdout
    store = open_store(str(data))
    assert len(store.symbols()) == 20 + 1 + 5
    aapl = store.read("AAPL")
    assert aapl.first_session.isoformat() == "1990-01-02" and aapl.last_session.isoformat() == "2022-12-28"
    assert aapl.close_only and not aapl.has_close and "skfolio" in aapl.note
    assert store.read("MTUM").first_session.isoformat() == "2014-01-02"
    closes = store.closes(["AAPL", "SP500"], 252)
    assert len(closes) == 252 and "adjusted closes" in closes.attrs["notes"][0]
    assert main(["show", "AAPL"]) == 0
    out = capsys.readouterr().out
    assert "close-only" in out and "adjusted for splits and dividends" in out and "BSD-3-Clause" in out
    assert "sklearn" not in sys.modules and "skfolio" not in sys.modules
