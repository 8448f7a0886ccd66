"""MLflow tracking: the store (store.py) and runs with their nested stages, resume and logging (tracker.py).

Registering models is not here: see lesion/registry.py.
"""

from lesion.tracking.store import DEFAULT_TRACKING_URI, configure_tracking
from lesion.tracking.tracker import (TAG_ENTRY, TAG_RUN_NAME, TAG_STAGE, Tracker, drop_unused_env_run, find_runs,
                                    finished_stage)

__all__ = ["DEFAULT_TRACKING_URI", "TAG_ENTRY", "TAG_RUN_NAME", "TAG_STAGE", "Tracker", "configure_tracking",
           "drop_unused_env_run", "find_runs", "finished_stage"]
