"""A small live plot of training and validation loss (Qt, drawn with QPainter)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

_TRAIN, _VAL = QColor("#7fb3ff"), QColor("#ffb347")


class LossPlot(QWidget):
    """Loss against step on a log scale: train loss every step, validation every epoch.

    Attributes
    ----------
    train, val : list of (step, loss)
        The points drawn so far.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        self.train, self.val = [], []
        self.update()

    def add(self, step: int, train_loss: float, val_loss: float | None = None) -> None:
        """Append the losses of one step and redraw."""
        self.train.append((step, train_loss))
        if val_loss is not None:
            self.val.append((step, val_loss))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        margin, width, height = 40, self.width(), self.height()
        painter.setPen(QPen(QColor("#888888")))
        painter.drawRect(margin, 8, width - margin - 8, height - margin)
        points = [p for p in self.train + self.val if p[1] > 0]
        if not points:
            painter.drawText(margin + 8, height // 2, "loss appears here while training")
            return
        low, high = (math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points)))
        high = high if high > low else low + 1
        last = max(max(p[0] for p in points), 2)

        def place(step, loss):
            x = margin + (step - 1) / (last - 1) * (width - margin - 8)
            y = 8 + (high - math.log10(loss)) / (high - low) * (height - margin)
            return QPointF(x, y)

        painter.drawText(4, 18, f"{10**high:.2g}")
        painter.drawText(4, height - margin + 8, f"{10**low:.2g}")
        painter.drawText(margin, height - 8, "step 1")
        painter.drawText(width - 80, height - 8, f"step {last}")
        for color, series, thick in ((_TRAIN, self.train, 1), (_VAL, self.val, 2)):
            painter.setPen(QPen(color, thick))
            shown = [place(s, v) for s, v in series if v > 0]
            for a, b in zip(shown, shown[1:]):
                painter.drawLine(a, b)
            for point in shown if thick > 1 else []:
                painter.drawEllipse(point, 2, 2)
        painter.setPen(QPen(_TRAIN))
        painter.drawText(margin + 8, 24, "train")
        painter.setPen(QPen(_VAL))
        painter.drawText(margin + 56, 24, "validation")
        painter.setPen(Qt.NoPen)
