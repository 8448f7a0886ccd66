"""The tracking store: which MLflow store lesion uses, and its first use made safe.

The tracking URI is MLFLOW_TRACKING_URI, else the embedded `sqlite:///mlflow.db`.
The first access to a store creates its tables (MLflow's schema migration),
which is not safe when several processes do it at once: configure_tracking
does it once per process, under a file lock for SQLite and with retries for
database servers, before anything else touches the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from lesion.progress import quiet_library_bars

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def configure_tracking() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    quiet_library_bars()
    mlflow.set_tracking_uri(uri)
    # mlflow run passes the registry of its own session; keep it consistent.
    if not os.environ.get("MLFLOW_REGISTRY_URI"):
        mlflow.set_registry_uri(uri)
    _initialise_store(uri)
    return uri


_initialised: set[str] = set()


def _open_stores() -> None:
    """Open the tracking and registry stores: on a new database this creates their tables."""
    client = MlflowClient()
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


def _initialise_store(uri: str, attempts: int = 5) -> None:
    """The store's first use, once per process, safe while other processes start on the same new store.

    MLflow creates a new database's tables on first use; two processes doing that at
    once collide in its schema migration (alembic: "Online migration expected to match
    one row ... 0 found"). SQLite is one file on one machine: a file lock lets one
    process create the tables while the others wait, then find them made. A database
    server may be shared by many machines: a failed first use is retried once the
    other process has finished its migration.
    """
    if uri in _initialised:
        return
    if uri.startswith("sqlite:"):
        key = hashlib.sha1(os.path.abspath(uri.split(":///", 1)[-1]).encode()).hexdigest()[:16]
        try:
            lock = open(Path(tempfile.gettempdir()) / f"lesion-store-{key}.lock", "a")
        except OSError:  # a lock file this user may not open (another user's): go on without it
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
            _open_stores()
        finally:
            if lock is not None:
                lock.close()
    elif "://" in uri and uri.split("://", 1)[0].split("+")[0] in ("postgresql", "mysql", "mssql"):
        for attempt in range(attempts):
            try:
                _open_stores()
                break
            except Exception:  # another process is in the middle of the migration
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0 + attempt)  # a store that failed to build is not cached: the next try builds it anew
    _initialised.add(uri)

