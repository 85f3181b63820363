"""WrappedTextLabel answers heightForWidth as QLabel does, from a cache."""

from __future__ import annotations

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from nbdesk.ui.labels import WrappedTextLabel
from nbdesk.ui.main_window import WELCOME


def twins(qtbot: QtBot, text: str) -> tuple[WrappedTextLabel, QLabel]:
    cached, plain = WrappedTextLabel(text), QLabel(text)
    plain.setWordWrap(True)
    for label in (cached, plain):
        qtbot.addWidget(label)
        label.setMargin(32)
    return cached, plain


def test_heights_match_a_plain_label_and_follow_changes(qtbot: QtBot) -> None:
    cached, plain = twins(qtbot, WELCOME)
    widths = (200, 420, 840, 420, 200)
    heights = [cached.heightForWidth(w) for w in widths]
    assert heights == [plain.heightForWidth(w) for w in widths]
    assert heights[0] > heights[1] > heights[2]  # rich text that really wraps
    for label in (cached, plain):
        label.setText(WELCOME + WELCOME)
    assert cached.heightForWidth(420) == plain.heightForWidth(420) > heights[1]
    for label in (cached, plain):
        label.setMargin(4)
    assert cached.heightForWidth(420) == plain.heightForWidth(420)
    bigger = QFont(cached.font())
    bigger.setPointSizeF(bigger.pointSizeF() * 2)
    for label in (cached, plain):
        label.setFont(bigger)
    assert cached.heightForWidth(420) == plain.heightForWidth(420)
