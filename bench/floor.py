"""Scenario child: the machine's noise floor for the stall scenarios. A bare PySide6 window
shown and left idle while ``StallMonitor`` runs: the longest "stall" here is the
scheduler's and the timer's, not the app's. Also the RSS of that bare window.

``python -m bench.floor SECONDS``
"""

from __future__ import annotations

import sys

from bench.common import emit


def run(seconds: float) -> dict[str, float]:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMainWindow

    from bench.stall import StallMonitor, rss_mb

    app = QApplication([sys.argv[0]])
    window = QMainWindow()
    window.resize(1360, 860)
    window.show()
    monitor = StallMonitor()
    QTimer.singleShot(300, monitor.start)
    QTimer.singleShot(300 + int(seconds * 1000), app.quit)
    app.exec()
    monitor.stop()
    summary = monitor.summary()
    return {"floor_max_stall_ms": summary["max_stall_ms"],
            "floor_p99_stall_ms": summary["p99_stall_ms"],
            "floor_rss_mb": round(rss_mb(), 1)}


if __name__ == "__main__":
    emit(run(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0))
