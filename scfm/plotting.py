"""pyplot for scfm's figures: no window, and a notebook keeps its own backend.

Library code draws figures and saves them to files, so it asks for the ``Agg`` backend (no
display needed on a cluster node or in CI). Inside a Jupyter kernel the user's backend (inline,
widget) is left alone: switching it to ``Agg`` would silently stop every later plot of the
notebook from showing.
"""

from __future__ import annotations

import sys


def pyplot():
    """``matplotlib.pyplot``, on ``Agg`` unless running in a Jupyter kernel."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
