"""A real browser for page tests: Debian's chromium driven by selenium through /usr/bin/chromedriver
(installed by .ci/run with apt; never downloaded), and the app served by uvicorn on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m lib.web` on a free loopback port with the given settings, stopped on exit."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, **env, "COMMANDER_WEB_HOST": "127.0.0.1"}
        full.pop("COMMANDER_WEB_TOKEN", None)
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "lib.web", "--port", str(self.port)], cwd=ROOT, env=full,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the web server did not start; see {log}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def chromium(width: int = 1400, height: int = 1000):
    """A headless chromium; fails loudly (never skips) when the Debian packages are missing."""
    if not Path(CHROMEDRIVER).exists() or not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        raise RuntimeError("chromium and chromium-driver are required: apt-get install -y chromium chromium-driver "
                           "(.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
