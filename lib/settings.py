"""Where the pipeline's four settings come from: flags, then environment variables, then defaults.

| setting | flag       | environment variable | embedded default            |
|---------|------------|----------------------|-----------------------------|
| mode    | --mode     | COMMANDER_MODE       | paper (live is never a default) |
| bus     | --bus      | COMMANDER_BUS        | sqlite:///runs/bus.sqlite   |
| broker  | --broker   | COMMANDER_BROKER     | sim                         |
| audit   | --audit    | COMMANDER_AUDIT      | runs/                       |
| executor| --executor | COMMANDER_EXECUTOR   | local (or dask://HOST:PORT, dask://local, cloudrun://PROJECT/REGION/JOB) |
| data    | --data     | COMMANDER_DATA       | runs/data/ (the audit store's data/) |

Credentials are never settings here: Firestore and GCS use Application Default Credentials,
IB Gateway holds its own login. Nothing below ever becomes a notebook parameter except these
non-secret values.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

MODES = ("paper", "live")

DEFAULTS = {
    "mode": "paper",
    "bus": "sqlite:///runs/bus.sqlite",
    "broker": "sim",
    "audit": "runs/",
    "executor": "local",
    "data": "runs/data/",
}
ENV = {"mode": "COMMANDER_MODE", "bus": "COMMANDER_BUS", "broker": "COMMANDER_BROKER", "audit": "COMMANDER_AUDIT",
       "executor": "COMMANDER_EXECUTOR", "data": "COMMANDER_DATA"}


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    bus: str
    broker: str
    audit: str
    executor: str = "local"  # where the strategy notebooks run: local, dask://HOST:PORT, cloudrun://P/R/J
    #: The market data store (lib.data); by default beside the audit store (`<audit>/data/`: runs/data/).
    data: str | None = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.data is None:
            object.__setattr__(self, "data", self.audit.rstrip("/") + "/data/")

    def describe(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)} ({self.sources.get(k, '?')})" for k in DEFAULTS)


def resolve(flags: Mapping[str, str | None] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve each setting from `flags` (None = not given), then `environ`, then DEFAULTS.

    Raises ValueError for an unknown mode or an empty value.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values, sources = {}, {}
    for key, default in DEFAULTS.items():
        if flags.get(key) not in (None, ""):
            values[key], sources[key] = str(flags[key]), "flag"
        elif environ.get(ENV[key]):
            values[key], sources[key] = environ[ENV[key]], f"${ENV[key]}"
        else:
            values[key], sources[key] = default, "default"
    if sources["data"] == "default":  # market data beside the audit store: runs/data/ or gs://BUCKET/PREFIX/data/
        values["data"] = values["audit"].rstrip("/") + "/data/"
    if values["mode"] not in MODES:
        raise ValueError(f"mode {values['mode']!r} ({sources['mode']}) is not one of {', '.join(MODES)}")
    _check_schemes(values, sources)
    return Settings(sources=sources, **values)


def _check_schemes(values: Mapping[str, str], sources: Mapping[str, str]) -> None:
    """Refuse an unknown URL scheme here, before any stage runs, not inside each notebook."""
    bus, broker, audit = values["bus"], values["broker"], values["audit"]
    if not (bus.startswith("sqlite:///") or bus.startswith("firestore://")):
        raise ValueError(f"bus {bus!r} ({sources['bus']}): expected sqlite:///PATH or firestore://PROJECT[/DATABASE]")
    if not (broker == "sim" or broker.startswith(("sim:///", "sim?", "ib://"))):
        raise ValueError(f"broker {broker!r} ({sources['broker']}): expected sim, sim:///PATH or "
                         "ib://HOST:PORT?client_id=N")
    if "://" in audit and not audit.startswith("gs://"):
        raise ValueError(f"audit {audit!r} ({sources['audit']}): expected a local folder like runs/ or gs://BUCKET/PREFIX")
    data = values.get("data", "")
    if "://" in data and not data.startswith("gs://"):
        raise ValueError(f"data {data!r} ({sources.get('data', '?')}): expected a local folder like runs/data/ or "
                         "gs://BUCKET/PREFIX/data/")
    executor = values.get("executor", "local")
    from lib.executors import ExecutorError, check
    try:
        check(executor)
    except ExecutorError as err:
        raise ValueError(f"{err} ({sources['executor']})") from None
    if executor.startswith("cloudrun://") and not (audit.startswith("gs://") and bus.startswith("firestore://")
                                                   and values.get("data", "gs://").startswith("gs://")):
        raise ValueError(f"executor {executor!r} ({sources['executor']}) runs notebooks on Cloud Run, which needs "
                         "a gs:// audit store, a firestore:// bus and a gs:// data store (its tasks cannot see "
                         "local files)")
