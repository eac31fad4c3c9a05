"""Screenshots of the reviewer's pages for the README (docs/screenshots/*.png).

    python scripts/screenshots.py [--out docs/screenshots]

Runs the pipeline twice on the embedded defaults in a temporary folder (with one strategy that
fails, so the error banner shows), serves the pages on 127.0.0.1 and photographs them with
Debian's chromium."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.browser import Server, chromium  # noqa: E402
from tests.pipeline_env import PipelineEnv  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = PipelineEnv.embedded(Path(tmp))
        from lib.seed import seed
        bus = env.bus()
        seed(bus)
        print("pipeline run 1 of 2 …", file=sys.stderr)
        env.run()
        bus.update("strategies/dummy", {"capital_allocation": 0.15})
        bus.set("strategies/flaky", {"name": "flaky", "enabled": True, "capital_allocation": 0.05,
                                     "notebook": "tests/notebooks/raising_strategy.ipynb"})
        print("pipeline run 2 of 2 …", file=sys.stderr)
        env.run()
        server = Server({"COMMANDER_BUS": env.settings.bus, "COMMANDER_BROKER": env.settings.broker,
                         "COMMANDER_AUDIT": env.settings.audit}, Path(tmp) / "web.log")
        driver = chromium(1400, 1100)
        try:
            shots = []
            driver.get(server.url + "/runs")
            shots.append("runs")
            driver.save_screenshot(str(out / "runs.png"))
            driver.find_element(By.CSS_SELECTOR, "a.execution-link").click()
            driver.set_window_size(1400, 2400)
            driver.save_screenshot(str(out / "execution.png"))
            driver.find_element(By.ID, "diff-link").click()
            driver.set_window_size(1400, 900)
            driver.save_screenshot(str(out / "diff.png"))
            driver.back()
            driver.find_element(By.PARTIAL_LINK_TEXT, "flaky").click()
            driver.save_screenshot(str(out / "strategy.png"))
            driver.back()
            for link in driver.find_elements(By.CSS_SELECTOR, "a.notebook-link"):
                if "flaky" in link.text:
                    link.click()
                    break
            driver.save_screenshot(str(out / "notebook_error.png"))
            driver.back()
            next(l for l in driver.find_elements(By.CSS_SELECTOR, "a.notebook-link") if "commander" in l.text).click()
            driver.set_window_size(1400, 3000)
            driver.save_screenshot(str(out / "commander_notebook.png"))
        finally:
            driver.quit()
            server.stop()
    for f in sorted(out.glob("*.png")):
        print(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
