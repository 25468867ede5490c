"""Shared fixtures: one real local Ray per test session and a real sqlite MLflow store per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

# Quiet, offline, deterministic defaults for every test (set before Ray or MLflow are imported).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray Train runs in tests last seconds: its controller polls workers every 0.5 s (default 2 s, so
# a finished or failed group is noticed sooner), and no preemption-watcher actor (one more
# process per run; nothing here drains nodes). Inherited by every Ray process the tests start.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# the training cache of every test session in its own folder, never the user's ~/.cache
os.environ.setdefault("SCFM_CACHE_DIR", tempfile.mkdtemp(prefix="scfm-test-cache-"))


def init_local_ray() -> None:
    """Start the session's local Ray (also used to restore it after the multi-node tests)."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a `ray start --head` of the e2e tests
            num_cpus=2,
            object_store_memory=512 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    DataContext.get_current().enable_progress_bars = False


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the whole session (starting one takes 5-15 s)."""
    import ray

    init_local_ray()
    yield ray
    ray.shutdown()


@contextmanager
def tracking_uri(uri: str) -> Iterator[str]:
    """MLFLOW_TRACKING_URI and mlflow's client point at ``uri`` for the block."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


def tracking_store(folder: Path) -> AbstractContextManager[str]:
    """A sqlite MLflow store in ``folder``, tracked to for the block (module- and session-scoped
    fixtures use this; tests use ``mlflow_uri``)."""
    return tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh sqlite MLflow tracking store; MLFLOW_TRACKING_URI points at it for the test."""
    with tracking_store(tmp_path) as uri:
        yield uri


# Real-data fixtures used by several test packages.
from tests.demo_fixture import demo_run  # noqa: E402, F401
from tests.fixtures_data import kang_corpus, kang_vocab_counts  # noqa: E402, F401
