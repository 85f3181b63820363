"""For models whose rows are kept by their C++ base (QStringListModel,
QStandardItemModel) beside a Python list of what each row is: painting and layout then
never call into Python for a row count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PySide6.QtCore import QAbstractItemModel


@contextlib.contextmanager
def quiet_reset(model: QAbstractItemModel) -> Iterator[None]:
    """A model reset around the block, in which the base's own row changes (its
    insertRows, removeRows, setRowCount) are not announced one by one: the reset tells
    the views everything at its end. Handlers of modelAboutToBeReset see the model as it
    was before the block."""
    model.beginResetModel()
    blocked = model.blockSignals(True)
    try:
        yield
    finally:
        model.blockSignals(blocked)
    model.endResetModel()


def insert_rows(model: QAbstractItemModel, row: int, count: int) -> None:
    """The base's ``insertRows`` (it tells the views), which must not refuse: a refusal
    would leave the Python list and the C++ rows out of step."""
    if count and not model.insertRows(row, count):
        raise RuntimeError(f"rows {row}+{count} not inserted")


def remove_rows(model: QAbstractItemModel, row: int, count: int) -> None:
    """The base's ``removeRows`` (it tells the views), which must not refuse."""
    if count and not model.removeRows(row, count):
        raise RuntimeError(f"rows {row}+{count} not removed")
