"""Qt views of the Spots widget: a sortable gene comparison table model and a small bar plot.

Both take plain arrays (no science here) and are cheap to refresh many times per second:
the table is a :class:`QAbstractTableModel` over two arrays (no per-cell items), the plot
paints a handful of bars with :class:`QPainter`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QRectF, Qt
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

_ROLE_DISPLAY = Qt.ItemDataRole.DisplayRole
_ROLE_ALIGN = Qt.ItemDataRole.TextAlignmentRole
_ROLE_SORT = Qt.ItemDataRole.UserRole


class GeneTableModel(QAbstractTableModel):
    """``gene | mean | reference mean | Δ | z`` rows over a comparison table (the columns of
    :func:`napari_histoexpress.inference.spot_compare.compare_groups`); sortable by any
    column, NaN last whatever the order. Headers (with units) are set by the widget."""

    COLUMNS = ("gene", "mean", "ref_mean", "delta", "z")
    SIGNED = ("delta", "z")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._genes = np.zeros(0, dtype=object)
        self._values = np.zeros((0, len(self.COLUMNS) - 1))
        self._headers = list(self.COLUMNS)
        self._sort: tuple[int, Qt.SortOrder] = (1, Qt.SortOrder.DescendingOrder)

    # -- data
    def set_table(self, table: pd.DataFrame) -> None:
        """Show a comparison table (missing numeric columns read as NaN)."""
        self.beginResetModel()
        self._genes = np.asarray(table["gene"], dtype=object) if len(table) else np.zeros(0, object)
        n = len(self._genes)
        cols = [
            table[c].to_numpy(dtype=np.float64) if c in table else np.full(n, np.nan)
            for c in self.COLUMNS[1:]
        ]
        self._values = np.stack(cols, axis=1) if n else np.zeros((0, len(cols)))
        self._apply_sort()
        self.endResetModel()

    def set_values(self, genes: list[str] | np.ndarray, values: np.ndarray) -> None:
        """Show plain means (no reference)."""
        self.set_table(pd.DataFrame({"gene": list(genes), "mean": np.asarray(values, float)}))

    def set_headers(self, headers: list[str]) -> None:
        self._headers = list(headers)
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self._headers) - 1)

    def clear(self) -> None:
        self.set_values([], np.zeros(0))

    def rows(self) -> list[tuple[str, float]]:
        """``(gene, mean)`` in display order."""
        return list(zip(self._genes.tolist(), self._values[:, 0].tolist(), strict=True))

    def records(self) -> pd.DataFrame:
        """The whole table in display order."""
        df = pd.DataFrame(self._values, columns=list(self.COLUMNS[1:]))
        df.insert(0, "gene", self._genes.tolist())
        return df

    def column(self, key: str) -> int:
        return self.COLUMNS.index(key)

    def _apply_sort(self) -> None:
        col, order = self._sort
        if col == 0:
            idx = np.argsort(self._genes.astype(str), kind="stable")
            if order == Qt.SortOrder.DescendingOrder:
                idx = idx[::-1]
        else:
            v = self._values[:, col - 1]
            key = -v if order == Qt.SortOrder.DescendingOrder else v
            idx = np.argsort(np.where(np.isnan(v), np.inf, key), kind="stable")  # NaN last
        self._genes, self._values = self._genes[idx], self._values[idx]

    # -- Qt model API
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._genes)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def data(self, index: QModelIndex, role: int = _ROLE_DISPLAY) -> Any:
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        if role == _ROLE_DISPLAY:
            if c == 0:
                return str(self._genes[r])
            v = self._values[r, c - 1]
            if np.isnan(v):
                return "n/a"
            return f"{v:+.3g}" if self.COLUMNS[c] in self.SIGNED else f"{v:.4g}"
        if role == _ROLE_SORT:
            return self._genes[r] if c == 0 else float(self._values[r, c - 1])
        if role == _ROLE_ALIGN and c > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = _ROLE_DISPLAY
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self._headers):
            return None
        if role in (_ROLE_DISPLAY, Qt.ItemDataRole.ToolTipRole):
            return self._headers[section]
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.layoutAboutToBeChanged.emit()
        self._sort = (int(column), order)
        self._apply_sort()
        self.layoutChanged.emit()


class BarPlot(QWidget):
    """Horizontal bars of the top genes (value labels on the bars)."""

    def __init__(self, parent: Any = None, n_bars: int = 10) -> None:
        super().__init__(parent)
        self.n_bars = n_bars
        self._labels: list[str] = []
        self._values = np.zeros(0)
        self.setMinimumHeight(16 * n_bars + 8)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, labels: list[str], values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(values)
        self._labels = [lab for lab, k in zip(labels, keep, strict=True) if k][: self.n_bars]
        self._values = values[keep][: self.n_bars]
        self.update()

    def bars(self) -> list[tuple[str, float]]:
        return list(zip(self._labels, self._values.tolist(), strict=True))

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            w, h = self.width(), self.height()
            n = len(self._values)
            if n == 0:
                return
            label_w = min(90, w // 3)
            row_h = (h - 4) / max(self.n_bars, 1)
            lo = min(0.0, float(self._values.min()))
            hi = max(0.0, float(self._values.max()))
            span = (hi - lo) or 1.0
            plot_w = max(w - label_w - 8, 10)
            x_zero = label_w + 4 + (0.0 - lo) / span * plot_w
            text = self.palette().windowText().color()
            for i, (label, v) in enumerate(zip(self._labels, self._values, strict=True)):
                y = 2 + i * row_h
                p.setPen(text)
                p.drawText(
                    QRectF(0, y, label_w, row_h),
                    int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                    label,
                )
                x_end = label_w + 4 + (v - lo) / span * plot_w
                rect = QRectF(min(x_zero, x_end), y + 2, abs(x_end - x_zero), row_h - 4)
                p.fillRect(rect, QColor("#00a5b8"))
                p.drawText(
                    QRectF(label_w + 6, y, plot_w, row_h),
                    int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                    f"{v:.3g}",
                )
        finally:
            p.end()
