"""Training curves drawn with plotext (through textual-plotext).

The title and the legend share the plot's top line (its border title), in the curves'
colours: plotext's own legend is drawn over the curves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual.app import RenderResult
from textual.content import Content
from textual_plotext import PlotextPlot


@dataclass(frozen=True)
class Curve:
    label: str
    xs: list[float]
    ys: list[float]
    color: str
    marker: str = "braille"  # thin lines, 2x4 dots a cell


class CurvesPlot(PlotextPlot):
    """A titled plot of a few curves.

    plotext draws in pure Python (tens of ms for a big plot), on the thread the
    trainer shares the GIL with: the drawing is kept until the curves, the size or
    the theme change, and `build_seconds` says what the last one cost, so the
    dashboard can space redraws out.
    """

    def __init__(self, title: str, *, id: str | None = None):  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.title = title
        self.curves: list[Curve] = []
        self.build_seconds = 0.0
        self._data_version = 0
        self._drawn_key: tuple | None = None
        self._drawn: Text = Text()

    def set_curves(self, curves: list[Curve], title: str | None = None) -> None:
        """Draw these curves (and, when given, under a new title)."""
        self.curves = curves
        self.title = title if title is not None else self.title
        plt = self.plt
        plt.clear_data()
        for c in curves:
            if c.xs:
                plt.plot(c.xs, c.ys, color=c.color, marker=c.marker)  # no label: no legend
        self.border_title = legend(self.title, [c for c in curves if c.xs])
        self._data_version += 1
        self.refresh()

    def render(self) -> RenderResult:
        width, height = self.size
        theme = self._get_plotext_theme_name(self.app.theme)
        key = (self._data_version, width, height, theme)
        if key != self._drawn_key:
            started = time.perf_counter()
            self._plot.plotsize(width, height)
            self._plot._set_size(width, height)  # as PlotextPlot.render does (its issue #5)
            self._plot.theme(theme)
            self._drawn = Text.from_ansi(self._plot.build())
            self.build_seconds = time.perf_counter() - started
            self._drawn_key = key
        return self._drawn


def legend(title: str, curves: list[Curve]) -> Content:
    """`title  ━ train  ━ val`, each mark in its curve's colour."""
    parts: list[str | tuple[str, str]] = [title]
    for c in curves:
        parts += ["  ", ("━", f"ansi_{c.color}"), f" {c.label}"]  # the colour plotext draws
    return Content.assemble(*parts)
