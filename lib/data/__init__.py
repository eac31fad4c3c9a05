"""The market data store: one shared, incremental history of daily bars per instrument.

    from lib.data import open_store
    store = open_store("runs/data/")            # or gs://BUCKET/PREFIX/data/ (setting `data`)
    store.closes(["SPY", "VIXY"], 200, end)      # what strategies read
    Updater(store, broker, "sim").update("SPY", 200, end)

Modules: `files` (local folder or GCS: read with a version, compare-and-swap write, lock), `store`
(Parquet series and their metadata), `update` (incremental updates on the XNYS calendar, paced),
`imports` (CSV files and skfolio's real example prices). CLI: `python -m lib.data --help`.
"""
from lib.data.files import ConflictError, DataError, open_files
from lib.data.store import BarStore, DamagedSeriesError, Series, describe_source, open_store
from lib.data.update import (FIRST_SESSIONS, Outcome, UpdateReport, Updater, blocked, broker_end, declared,
                             source_of, update_from_broker)

__all__ = ["BarStore", "ConflictError", "DamagedSeriesError", "DataError", "FIRST_SESSIONS", "Outcome",
           "Series", "UpdateReport", "Updater", "blocked", "broker_end", "declared", "describe_source",
           "open_files", "open_store", "source_of", "update_from_broker"]
