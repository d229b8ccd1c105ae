"""Plain-text tables for the metrics' per-class logs (no table library needed)."""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ['format_table']


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned first column and right-aligned numbers."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return '| ' + ' | '.join(parts) + ' |'

    return '\n'.join([rule, line(cells[0]), rule] + [line(r) for r in cells[1:]] + [rule])
