"""scfm's log handler follows ``sys.stderr``: commands run one after another in one process (a
notebook, a test runner that swaps and closes stderr) each get their records."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from scfm.logs import setup_logging


@pytest.fixture
def root_logging():
    root, scfm = logging.getLogger(), logging.getLogger("scfm")
    saved = root.handlers[:], root.level, scfm.level
    yield
    root.handlers[:], (root_level, scfm_level) = saved[0], saved[1:]
    root.setLevel(root_level)
    scfm.setLevel(scfm_level)


def test_records_reach_the_stderr_of_each_command(root_logging, monkeypatch):
    log = logging.getLogger("scfm.test_logs")
    for i in range(2):
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        setup_logging()
        log.info("command %d", i)
        logging.getLogger("urllib3").info("a library's INFO is not shown")
        assert stderr.getvalue().endswith(f"INFO scfm.test_logs: command {i}\n")
        assert "library" not in stderr.getvalue()
        stderr.close()  # as a test runner does after a command
    assert sum(getattr(h, "_scfm", False) for h in logging.getLogger().handlers) == 1
    setup_logging(logging.WARNING)
    monkeypatch.setattr(sys, "stderr", stderr := io.StringIO())
    log.info("hidden")
    log.warning("shown")
    text = stderr.getvalue()
    assert "hidden" not in text and "WARNING scfm.test_logs: shown" in text
