"""One logging set-up for every command and job entry point."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was at set-up
    (a notebook, or a test runner that swaps and closes stderr between commands)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int | str = logging.INFO) -> None:
    """scfm's messages at ``level`` (INFO by default: what a long job is doing), libraries'
    at WARNING; safe to call more than once (the last call's level wins)."""
    root = logging.getLogger()
    if not any(getattr(h, "_scfm", False) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._scfm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("scfm").setLevel(level)
