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
