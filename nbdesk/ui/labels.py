"""Labels with cheaper layout answers."""

from __future__ import annotations

from PySide6.QtCore import QEvent
from PySide6.QtWidgets import QLabel, QWidget


class WrappedTextLabel(QLabel):
    """A word-wrapped label (rich text too) that remembers its height for a width.

    Qt asks a wrapped label ``heightForWidth`` several times in every layout pass of the
    window, and a rich-text QLabel lays its whole document out for each answer. Any
    label elsewhere changing its text invalidates the window's layout, so with many jobs
    finishing the welcome text was laid out again and again on the GUI thread. The
    answer depends only on the width, the text and how it is drawn: remembered per
    width (and margin, indent, wrapping), forgotten when the text, font or style
    change."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self._heights: dict[tuple[int, int, int, bool], int] = {}
        self.setWordWrap(True)

    def heightForWidth(self, width: int) -> int:
        key = (width, self.margin(), self.indent(), self.wordWrap())
        height = self._heights.get(key)
        if height is None:
            if len(self._heights) >= 64:  # a window resized by dragging: keep it small
                self._heights.clear()
            height = self._heights[key] = super().heightForWidth(width)
        return height

    def setText(self, text: str) -> None:
        self._heights.clear()
        super().setText(text)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange,
                            QEvent.Type.LayoutDirectionChange):
            self._heights.clear()
        super().changeEvent(event)
