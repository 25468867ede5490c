"""Run an iterator in a background thread behind a bounded queue.

The producer (reading, decoding, packing: numpy and pyarrow release the GIL for their work) runs
ahead of the consumer by at most ``depth`` items, so memory stays bounded and the consumer (a
training step, a GPU forward) rarely waits. Exceptions reach the consumer; closing the consumer's
iterator stops the producer and closes the source iterator in its own thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def background(items: Iterable[T], depth: int = 2, name: str = "scfm-prefetch") -> Iterator[T]:
    """Iterate ``items`` in a daemon thread, at most ``depth`` items ahead of the caller."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put(x):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Raised(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Raised):
                raise x.error
            yield x
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
