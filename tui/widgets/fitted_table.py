"""A DataTable whose columns fit the width it is given, and the pure arithmetic behind it.

When every cell fits, each column is as wide as its widest cell. When not, the widest
columns are cut to one common width (never below each column's floor), and a cut cell
shows "…" where text was left out: a name keeps its start, a `module:function` its end,
a run's `name/stamp` the start of its name and its whole stamp (its time alone when the
name would keep less than 10 characters). So at 80 columns the
table shows every column instead of scrolling sideways.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.markup import escape
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

ELLIPSIS = "…"
STAMP = re.compile(r"\d{8}-\d{6}")  # a run's YYYYmmdd-HHMMSS
NAME_KEPT = 10  # a run's name keeps this many characters before its stamp loses its date
CELL_PADDING = 1  # DataTable's, each side of a cell
SCROLLBAR = 2  # the vertical scrollbar's width (Textual's default)
CELL_LIMIT = 80  # characters a cell shows at most, however wide the terminal


@dataclass(frozen=True)
class Column:
    label: str
    floor: int = 8  # a longer cell is never cut below this many terminal cells
    cut: str = "end"  # where a long cell loses text: "end", "start", or "middle" (before
    # its last "/": a run's stamp stays whole)


def printable(text: str) -> str:
    """One line: a control character (a newline in a name) shows as `?`."""
    return "".join(c if c.isprintable() else "?" for c in text)


def cut(text: str, width: int, where: str = "end") -> str:
    """`text` in at most `width` terminal cells, "…" where text was left out (`where`:
    "end", "start" or "middle", as Column.cut)."""
    if cell_len(text) <= width:
        return text
    if where == "middle":
        head, slash, tail = text.rpartition("/")
        if STAMP.fullmatch(tail) and width - len(tail) - 1 < min(cell_len(head), NAME_KEPT):
            # the name says more than the stamp's date: `quickstart-optuna/…081748`
            tail = ELLIPSIS + tail[9:]
        if slash and cell_len(tail) + 3 <= width:  # at least one character of the head
            return cut(head, width - cell_len(tail) - 1) + slash + tail
        where = "start"
    if width <= 1:
        return ELLIPSIS[:width]
    from_start = where == "start"
    kept, used = [], 1
    for char in reversed(text) if from_start else text:
        used += cell_len(char)
        if used > width:
            break
        kept.append(char)
    if from_start:
        return ELLIPSIS + "".join(reversed(kept))
    return "".join(kept) + ELLIPSIS


def _cell(text: str, column: Column) -> str:
    """A cell as shown at most: one line of CELL_LIMIT cells (a name from a file can be
    any length)."""
    near = text[-CELL_LIMIT - 1 :] if column.cut == "start" else text[: CELL_LIMIT + 1]
    if column.cut == "middle" and len(text) > 2 * CELL_LIMIT:
        near = text[:CELL_LIMIT] + text[-CELL_LIMIT:]
    return cut(printable(near), CELL_LIMIT, column.cut)


def fit_widths(natural: Sequence[int], floors: Sequence[int], budget: int) -> list[int]:
    """Each column's width in `budget` cells: its natural width when all fit, else the
    highest common width the wide ones are cut to (a column narrower stays as it is; none
    goes below its floor, so a very narrow table is wider than `budget` and scrolls)."""
    if sum(natural) <= budget:
        return list(natural)
    lowest = [min(n, f) for n, f in zip(natural, floors, strict=True)]
    for level in range(max(natural), -1, -1):
        widths = [min(n, max(low, level)) for n, low in zip(natural, lowest, strict=True)]
        if sum(widths) <= budget:
            return _spread(widths, natural, budget - sum(widths))
    return lowest


def _spread(widths: list[int], natural: Sequence[int], spare: int) -> list[int]:
    """The cells left over, one each to the cut columns, from the left."""
    for i, n in enumerate(natural):
        if spare and widths[i] < n:
            widths[i] += 1
            spare -= 1
    return widths


class FittedTable(DataTable):
    """A row-cursor DataTable filled with `show(rows, width, height)`: plain text cells
    (never read as markup) cut to fit `width`; the row under the cursor stays under it."""

    def __init__(self, columns: Sequence[Column], **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.fitted_columns = tuple(columns)
        self._shown: tuple = ()  # the rows, width and height last shown
        self._layout: tuple = ()  # the row keys and column widths last laid out
        self._visible: list[list[str]] = []  # the cells as last shown, cut to their width

    def show(self, rows: Sequence[tuple[str, Sequence[str]]], width: int, height: int) -> None:
        """`rows`: (key, cells) pairs. `width`, `height`: the table's size in cells; rows
        that do not fit in `height` (a header line above them) bring a scrollbar."""
        shown = ([(key, tuple(row)) for key, row in rows], width, height)
        if shown == self._shown:  # the same again (a live run's list, every 2 s): no redraw
            return
        self._shown = shown
        columns = self.fitted_columns
        cells = [[_cell(c, col) for c, col in zip(row, columns, strict=True)] for _, row in rows]
        natural = [
            max([cell_len(col.label)] + [cell_len(row[i]) for row in cells])
            for i, col in enumerate(columns)
        ]
        scrollbar = SCROLLBAR if len(rows) + 1 > height else 0
        budget = width - scrollbar - 2 * CELL_PADDING * len(columns)
        widths = fit_widths(natural, [c.floor for c in columns], budget)
        visible = [
            [escape(cut(text, w, c.cut)) for text, w, c in zip(row, widths, columns, strict=True)]
            for row in cells
        ]
        layout = ([key for key, _ in rows], widths, [c.label for c in columns])
        if layout == self._layout:  # the same rows and widths: only the cells that changed
            self._update_cells(layout[0], visible)
            return
        self._layout, self._visible = layout, visible
        key, index = self.cursor_key(), self.cursor_row
        self.clear(columns=True)
        for col, w in zip(columns, widths, strict=True):
            self.add_column(escape(cut(col.label, w)), width=w, key=col.label)
        for (row_key, _), row in zip(rows, visible, strict=True):
            self.add_row(*row, key=row_key)
        if key in layout[0]:
            self.move_to(key)
        elif rows:  # its row went (removed, here or elsewhere): the next row takes its place
            self.move_cursor(row=min(index, len(rows) - 1))

    def _update_cells(self, keys: list[str], visible: list[list[str]]) -> None:
        """A live list's new values (every second or two): cell by cell, never the whole
        table rebuilt (which lays the screen out again: a console watching a sweep would
        cost the trials' CPU)."""
        for key, old, new in zip(keys, self._visible, visible, strict=True):
            for col, before, now in zip(self.fitted_columns, old, new, strict=True):
                if before != now:
                    self.update_cell(key, col.label, now)
        self._visible = visible

    def cursor_key(self) -> str | None:
        """The key of the row under the cursor; None when the table is empty."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - a stale cursor just starts at the top
            return None

    def move_to(self, key: str | None) -> None:
        """Put the cursor on the row of `key`; a row gone leaves it where it is."""
        if key is None:
            return
        with contextlib.suppress(RowDoesNotExist):
            self.move_cursor(row=self.get_row_index(key))

    def key_at(self, index: int) -> str | None:
        """The key of row `index`, None out of range."""
        if not 0 <= index < self.row_count:
            return None
        return self.coordinate_to_cell_key((index, 0)).row_key.value
