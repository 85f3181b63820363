"""Demo mode as the composition roots (the window, the command line) give it to the
runtime: the loopback simulator of ``nbdesk.sim``, a provider the user can pick with no
key. ``core`` knows only its shape (``core.connector.StartDemo``), so it rests on ``api``
alone.

The simulator (with Pillow) is imported when Demo is first used, on the connector's
worker thread, not when the app starts: this module imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbdesk.sim import SimConfig, Simulator


def start_demo(config: SimConfig | None = None) -> Simulator:
    """A running simulator on a free loopback port (``config``: the tests' faster one)."""
    from nbdesk.sim import Simulator

    return Simulator(config).start()
