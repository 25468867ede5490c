"""Waiting in tests: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Call ``condition`` every ``interval`` seconds until it holds (True) or ``timeout`` seconds
    have passed (False); the caller decides whether a timeout is an error."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
