"""Terminal output (presentation edge): aligned columns, and colour only on a terminal that wants it.

Pipeline position: the last step of every command that prints state.  Colour is on when the
stream is a TTY, ``TERM`` is not ``dumb`` and ``NO_COLOR`` is unset or empty (no-color.org),
or when ``--color always`` asks for it; ``--color never`` turns it off.  The styling goes
through ``rich``, imported only when colour is on — a ``run --once`` into a pipe or a file never
pays for it.  Alignment is computed on the plain text first, so a coloured table lines up as
the plain one does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TextIO

#: Styles of the status words (rich style names).
STYLES: dict[str, str] = {
    "clean": "green", "reverted": "green", "retired": "magenta", "reported": "cyan", "held": "yellow",
    "blocked": "yellow", "failed": "bold red", "error": "bold red", "detected": "yellow", "gone": "dim",
    "unmanaged": "dim", "would": "cyan",
}


def color_wanted(stream: TextIO, mode: str = "auto") -> bool:
    """Whether to colour ``stream``: ``always``, ``never``, or ``auto`` (a TTY, not dumb, no ``NO_COLOR``)."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


class Painter:
    """Colours words for one stream (a no-op without colour)."""

    def __init__(self, stream: TextIO, mode: str = "auto") -> None:
        self.stream = stream
        self.color = color_wanted(stream, mode)
        self._console: Any = None
        if self.color:
            from rich.console import Console  # only on a colour terminal

            self._console = Console(file=stream, force_terminal=True, color_system="standard", highlight=False,
                                    soft_wrap=True, emoji=False, markup=False)

    def paint(self, text: str, style: str | None) -> str:
        """``text`` in ``style`` (ANSI through rich), or as it is without colour or style."""
        if not self.color or not style or not text:
            return text
        from rich.text import Text

        with self._console.capture() as cap:
            self._console.print(Text(text, style=style), end="")
        return str(cap.get())

    def word(self, word: str, width: int = 0) -> str:
        """A status word padded to ``width`` then coloured (padding outside the colour keeps columns straight)."""
        pad = " " * max(0, width - len(word))
        return self.paint(word, STYLES.get(word)) + pad


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, painter: Painter | None = None,
          status_col: int | None = None, gap: int = 3) -> list[str]:
    """``kubectl get``-style columns: upper-case header, each column as wide as its widest cell, last one free."""
    if not header:
        return []
    widths = [len(h) for h in header]
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell))
    sep = " " * gap
    lines = [sep.join(h.ljust(widths[i]) if i < len(header) - 1 else h for i, h in enumerate(header)).rstrip()]
    for r in rows:
        cells = []
        for i, cell in enumerate(r):
            last = i == len(r) - 1
            if painter is not None and i == status_col:
                cells.append(painter.word(cell, 0 if last else widths[i]))
            else:
                cells.append(cell if last else cell.ljust(widths[i]))
        lines.append(sep.join(cells).rstrip())
    return lines


__all__ = ["STYLES", "Painter", "color_wanted", "table"]
