"""Every notebook runs top to bottom with its default parameters, as a researcher opening it in
Jupyter would run it (working directory = the notebook's folder), on the embedded defaults."""
from __future__ import annotations

import nbformat
import papermill as pm
import pytest

from lib.bus import open_bus
from tests.pipeline_env import ROOT

ORDER = ["strategies/dummy.ipynb", "strategies/spy_macd_vixy.ipynb", "strategies/test_signal_generator.ipynb",
         "reconcile.ipynb", "commander.ipynb"]


def test_source_notebooks_have_a_parameters_cell_and_no_outputs():
    for name in ORDER:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert "credential" not in tagged[0].source.lower().replace("never put credentials", "")
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


def test_notebooks_run_with_defaults_on_the_embedded_backends(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDER_BUS", f"sqlite:///{tmp_path / 'bus.sqlite'}")
    monkeypatch.setenv("COMMANDER_BROKER", f"sim:///{tmp_path / 'sim.sqlite'}?as_of=2026-11-20")
    monkeypatch.setenv("COMMANDER_AUDIT", str(tmp_path / "runs"))
    monkeypatch.setenv("COMMANDER_DATA", str(tmp_path / "data"))  # a researcher's run updates the store first
    for name in ORDER:
        src = ROOT / "notebooks" / name
        pm.execute_notebook(str(src), str(tmp_path / src.name), cwd=str(src.parent), kernel_name="python3",
                            progress_bar=False, shutdown_kernel="immediate")
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.sqlite'}")
    assert {sid: bus.get(f"strategies/{sid}/intent/latest")["status"]
            for sid in ("dummy", "spy_macd_vixy", "test_signal_generator")} == dict.fromkeys(
        ("dummy", "spy_macd_vixy", "test_signal_generator"), "success")
    from lib.data import open_store
    assert open_store(str(tmp_path / "data")).symbols() == ["GLD", "SPY", "TLT", "VIXY"]
    executions = bus.list("executions")
    assert [e["status"] for e in executions.values()] == ["dry_run"]  # a notebook opened by hand only plans
    commander = nbformat.read(tmp_path / "commander.ipynb", as_version=4)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in commander.cells for o in c.get("outputs", []))
