"""The README's simulator examples work, as written, on a fresh folder (a person at TWS)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from tests.crash_harness import ROOT


def readme_block(after_heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(after_heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_simulator_examples_run_as_written(tmp_path):
    lines = readme_block("## The simulator")
    assert any("advance" in line for line in lines) and len(lines) >= 5
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for line in lines:
        args = shlex.split(line)
        assert args[:3] == ["python", "-m", "lib.broker.sim"], line
        done = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "runs" / "sim.sqlite").exists()
