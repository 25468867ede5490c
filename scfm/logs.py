"""One logging set-up for every command and job entry point."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """scfm's messages at ``level`` (INFO by default: what a long job is doing), libraries'
    at WARNING; safe to call more than once (the last call's level wins)."""
    root = logging.getLogger()
    if not any(getattr(h, "_scfm", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._scfm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("scfm").setLevel(level)
