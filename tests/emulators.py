"""Start and stop the real emulators the tests run against (bound to 127.0.0.1, stopped by PID)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

FIRESTORE_JAR_GLOB = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def find_firestore_jar() -> str:
    """The emulator jar from the Debian package; fails loudly (never skips) when it is missing."""
    if Path(FIRESTORE_JAR_GLOB).is_file():
        return FIRESTORE_JAR_GLOB
    with contextlib.suppress(Exception):
        out = subprocess.run(["dpkg", "-L", "google-cloud-cli-firestore-emulator"],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.endswith("emulator.jar"):
                return line
    raise RuntimeError(
        "the Firestore emulator jar is missing: install the Debian package "
        "google-cloud-cli-firestore-emulator (the Firestore half of the tests must not be skipped)")


class FirestoreEmulator:
    """The official emulator as a java child process; `host` is what FIRESTORE_EMULATOR_HOST takes."""

    def __init__(self, log_dir: Path):
        if shutil.which("java") is None:
            raise RuntimeError("java is not on PATH: the Firestore emulator needs Java 11+")
        self.jar = find_firestore_jar()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / "firestore-emulator.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FirestoreEmulator":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["java", "-cp", self.jar, "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
             "start", f"--host=127.0.0.1", f"--port={self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, 60, self.proc, "the Firestore emulator")
        return self

    def reset(self, project: str) -> None:
        """Delete every document of `project` (the emulator's own reset endpoint)."""
        req = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
