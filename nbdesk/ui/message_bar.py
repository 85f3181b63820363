"""One consistent place for messages: the latest error, notice or undo offer."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QWidget

_STYLES = {
    "error": "background: rgba(214, 69, 65, 0.16); border: 1px solid rgba(214, 69, 65, 0.6);",
    "warning": "background: rgba(217, 139, 31, 0.16); border: 1px solid rgba(217, 139, 31, 0.6);",
    "info": "background: rgba(46, 157, 87, 0.12); border: 1px solid rgba(46, 157, 87, 0.5);",
}
_STYLES["undo"] = _STYLES["info"]


class MessageBar(QFrame):
    undoRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.undo_button = QPushButton("Undo", self)
        self.undo_button.clicked.connect(self._undo)
        close = QToolButton(self)
        close.setText("×")
        close.setToolTip("Dismiss (Esc)")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.undo_button)
        layout.addWidget(close)
        self.level = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_message(self, level: str, text: str) -> None:
        self.level = level
        self.label.setText(text)
        self.setStyleSheet(f"#messageBar {{ {_STYLES.get(level, _STYLES['info'])} "
                           "border-radius: 4px; }")
        self.undo_button.setVisible(level == "undo")
        self.show()
        # errors stay until dismissed; notices fade after a while
        if level in ("info", "undo"):
            self._timer.start(8000 if level == "info" else 15000)
        else:
            self._timer.stop()

    def _undo(self) -> None:
        self.hide()
        self.undoRequested.emit()
