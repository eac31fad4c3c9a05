"""A pipeline environment in a temporary folder: its own bus, simulator and audit folder."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from lib import pipeline
from lib.bus import open_bus
from lib.progress import Progress
from lib.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-20"  # a Friday session inside the bundled bars


@dataclasses.dataclass
class PipelineEnv:
    tmp: Path
    settings: Settings

    @classmethod
    def embedded(cls, tmp: Path) -> "PipelineEnv":
        return cls(tmp, Settings(mode="paper", bus=f"sqlite:///{tmp / 'bus.sqlite'}",
                                 broker=f"sim:///{tmp / 'sim.sqlite'}", audit=str(tmp / "runs")))

    def run(self, **options) -> pipeline.RunResult:
        options.setdefault("as_of", AS_OF)
        options.setdefault("strategy_timeout", 120.0)
        log = open(self.tmp / "pipeline.log", "a")
        return pipeline.run(self.settings, pipeline.Options(**options), Progress(stream=log))

    def bus(self):
        return open_bus(self.settings.bus)

    def sim(self, *args: str) -> subprocess.CompletedProcess:
        """The simulator's CLI, as a person at TWS would use it."""
        db = self.settings.broker[len("sim:///"):]
        return subprocess.run([sys.executable, "-m", "lib.broker.sim", "--db", db, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
