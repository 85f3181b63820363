"""Guards against a Qt binding that corrupts reference counts (PySide6 6.12.0 did)."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    plain = Signal()
    payload = Signal(object, tuple)


def test_signal_emit_keeps_reference_counts_of_true_and_false() -> None:
    """qasync wakes the loop from threads with a signal; the engine emits per job step.
    A binding whose emit() drops a reference to True crashes a long session."""
    emitter = _Emitter()
    emitter.payload.connect(lambda _cb, _args: None)
    before = sys.getrefcount(True), sys.getrefcount(False)
    for _ in range(200):
        emitter.plain.emit()
        emitter.payload.emit(len, ())
    after = sys.getrefcount(True), sys.getrefcount(False)
    assert abs(after[0] - before[0]) < 10 and abs(after[1] - before[1]) < 10, (before, after)
