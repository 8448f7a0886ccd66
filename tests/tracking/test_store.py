"""The tracking store (tracking/store.py): tables created safely by many workers at once; a migrating server is
asked again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

from lesion.tracking import TAG_RUN_NAME
from tests.conftest import REPO, subprocess_env


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import alembic, sqlalchemy, mlflow.store.tracking.sqlalchemy_store  # the slow imports, before the start
    from lesion.tracking import Tracker
    barrier, ready, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ready.touch()
    while not barrier.exists():
        time.sleep(0.002)
    with Tracker().run("finetune", name, "race", params={"worker": name}):
        pass
""")


@pytest.mark.slow
def test_workers_that_start_together_on_a_new_store_all_get_their_run(tmp_path):
    """Released at the same instant, each process's first store access meets an empty SQLite database:
    without care, their schema migrations collide (alembic: 'Online migration expected to match one row')."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    uri = f"sqlite:///{tmp_path / 'new-store.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO))
    barrier, n = tmp_path / "go", 4
    procs = [subprocess.Popen([sys.executable, str(script), str(barrier), str(tmp_path / f"ready{i}"), f"w{i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
        assert time.time() < deadline, "the racers never got ready"
        time.sleep(0.05)
    barrier.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    failed = [out[-1500:] for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, failed
    client = MlflowClient(tracking_uri=uri)
    names = sorted(r.data.tags[TAG_RUN_NAME] for r in client.search_runs([client.get_experiment_by_name("race").experiment_id]))
    assert names == [f"w{i}" for i in range(n)]


def test_a_database_server_that_is_migrating_is_asked_again(monkeypatch):
    import lesion.tracking.store as tracking_module

    calls = []

    def busy_then_ready():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Online migration expected to match one row when updating ... 0 found")

    monkeypatch.setattr(tracking_module, "_open_stores", busy_then_ready)
    monkeypatch.setattr(tracking_module.time, "sleep", lambda s: None)
    tracking_module._initialise_store("postgresql://user@dbhost/mlflow-test-retry")
    assert len(calls) == 3
    with pytest.raises(RuntimeError, match="Online migration"):
        calls.clear()
        tracking_module._initialise_store("postgresql://user@dbhost/mlflow-test-gives-up", attempts=2)
