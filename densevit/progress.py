"""Progress with a remaining-time estimate, for the loops of densevit that take a while.

    for path in track(paths, desc='write'):        # an iterable, counted as it is consumed
        ...
    with Progress(total=4, desc='convert') as bar:  # manual updates
        ...; bar.update()

On a terminal (the stream's ``isatty()``) a one-line bar is redrawn in place with a carriage
return, at most ``redraw`` times a second: percentage, count, elapsed and remaining time, rate.
Anywhere else (a log file, CI) carriage returns would make the log unreadable, so plain lines are
written instead: one each time the count crosses another tenth of the total, one after
``interval`` seconds without a line, and a last one with the total and the time it took::

    write: 120/500 (24%) 3.1 it/s eta 2:03
    write: 500/500 (100%) 3.1 it/s in 2:41

Only the standard library is imported, so importing this module costs nothing.
"""
from __future__ import annotations

import io
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

__all__ = ['Progress', 'track', 'is_terminal', 'format_time', 'format_rate']

T = TypeVar('T')

_BAR_WIDTH = 30  # most cells the bar itself takes on a wide terminal


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an open terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def format_time(seconds: float) -> str:
    """``M:SS`` below an hour, ``H:MM:SS`` above (as tqdm and mmengine's eta)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def format_rate(rate: float, unit: str = 'it') -> str:
    """Items per second, or seconds per item when that reads better (below one a second)."""
    if rate <= 0:
        return f'? {unit}/s'
    if rate >= 1:
        return f'{rate:.1f} {unit}/s' if rate < 100 else f'{rate:.0f} {unit}/s'
    return f'{1 / rate:.1f} s/{unit}'


def _columns(stream) -> int:
    """Width of the terminal behind ``stream``; 80 when it cannot be asked."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 80


class Progress:
    """A counter towards ``total`` that shows its progress on ``stream``.

    Args:
        total: Number of steps to do; None when unknown (then no percentage or remaining time).
        desc: What is being done, written before the count.
        stream: Where to write; ``sys.stderr`` by default (standard output stays for results).
        initial: Steps already done before this one started (a resumed run); the rate counts
            only the steps done here.
        unit: Name of a step in the rate (``it/s``).
        interval: Seconds after which a plain line is written even if no tenth was crossed.
        redraw: Seconds between two redraws of the terminal bar (the last state is always drawn
            when the progress closes).
    """

    def __init__(self, total: int | None = None, desc: str = '', *, stream: TextIO | None = None,
                 initial: int = 0, unit: str = 'it', interval: float = 60.0,
                 redraw: float = 0.1) -> None:
        if total is not None and total < 0:
            raise ValueError(f'Progress total must be >= 0 or None, got {total}')
        self.total = total
        self.desc = desc
        self.n = initial
        self.unit = unit
        self.interval = interval
        self.redraw = redraw
        self.stream = sys.stderr if stream is None else stream
        self.tty = is_terminal(self.stream)
        self.closed = False
        self._initial = initial
        self._start = time.monotonic()
        self._last_draw = float('-inf')
        self._last_line = self._start
        self._tenths = self._tenths_done(initial)
        self._drawn = 0  # length of the bar now on the terminal line (0: nothing to clear)
        self._fill = '█' if 'utf' in (getattr(self.stream, 'encoding', '') or '').lower() else '#'

    # ----------------------------------------------------------------------------- public API

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps done and show them if it is time to."""
        self.n += n
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= self.redraw:
                self._draw(now)
            return
        tenths = self._tenths_done(self.n)
        if self.total is not None and self.n >= self.total:
            return  # the closing line says it
        if tenths > self._tenths or now - self._last_line >= self.interval:
            self._tenths = tenths
            self._line(now)

    def set_description(self, desc: str) -> None:
        """Change what is written before the count; the bar shows it at once."""
        self.desc = desc
        if self.tty and not self.closed:
            self._draw(time.monotonic())

    def clear(self) -> None:
        """Blank the bar's line so that other output can be written there; the next update
        draws the bar again (on a terminal; nothing to do elsewhere)."""
        if self.tty and self._drawn:
            self._write('\r' + ' ' * self._drawn + '\r')
            self._drawn = 0
            self._last_draw = float('-inf')

    def close(self) -> None:
        """Show the final state: the full bar and a newline, or the closing plain line."""
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if self.tty:
            self._draw(now, final=True)
            self._write('\n')
        else:
            self._line(now, final=True)

    def abort(self) -> None:
        """Stop without a final state (on an error): the bar's line is blanked, so the error
        message that follows starts a clean line and stays the only one."""
        self.clear()
        self.closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------------------- drawing

    def _tenths_done(self, n: int) -> int:
        return n * 10 // self.total if self.total else 0

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        return (self.n - self._initial) / elapsed if elapsed > 0 else 0.0

    def _eta(self, now: float) -> str:
        rate = self._rate(now)
        return format_time((self.total - self.n) / rate) if rate > 0 else '?'

    def _prefix(self) -> str:
        return f'{self.desc}: ' if self.desc else ''

    def _line(self, now: float, final: bool = False) -> None:
        """One plain line: count, percentage, rate and remaining time (or the time taken)."""
        rate = format_rate(self._rate(now), self.unit)
        if self.total is None:
            count = f'{self.n} done'
        else:
            percent = 100 * self.n // self.total if self.total else 100
            count = f'{self.n}/{self.total} ({percent}%)'
        if final:
            tail = f'in {format_time(now - self._start)}'
        elif self.total is None:
            tail = f'{format_time(now - self._start)} elapsed'
        else:
            tail = f'eta {self._eta(now)}'
        self._write(f'{self._prefix()}{count} {rate} {tail}\n')
        self._last_line = now

    def _draw(self, now: float, final: bool = False) -> None:
        """Redraw the bar in place: ``desc:  24%|███     | 120/500 [0:38<2:03, 3.1 it/s]``."""
        elapsed = format_time(now - self._start)
        rate = format_rate(self._rate(now), self.unit)
        columns = _columns(self.stream)
        if self.total is None:
            text = f'{self._prefix()}{self.n} {self.unit} [{elapsed}, {rate}]'
        else:
            fraction = min(1.0, self.n / self.total) if self.total else 1.0
            timing = elapsed if final else f'{elapsed}<{self._eta(now)}'
            head = f'{self._prefix()}{int(100 * fraction):3d}%'
            tail = f' {self.n}/{self.total} [{timing}, {rate}]'
            width = min(_BAR_WIDTH, columns - 1 - len(head) - len(tail) - 2)
            if width >= 4:
                filled = int(fraction * width)
                head += '|' + self._fill * filled + ' ' * (width - filled) + '|'
            text = head + tail
        text = text[:columns - 1]  # never wrap: a wrapped line cannot be redrawn in place
        self._write('\r' + text + ' ' * max(0, self._drawn - len(text)))
        self._drawn = len(text)
        self._last_draw = now

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def track(iterable: Iterable[T], total: int | None = None, desc: str = '', *,
          stream: TextIO | None = None, unit: str = 'it', interval: float = 60.0,
          redraw: float = 0.1) -> Iterator[T]:
    """Yield the items of ``iterable`` while showing how many have been done (the arguments
    are those of :class:`Progress`).

    An item counts as done when the next one is asked for. ``total`` defaults to
    ``len(iterable)`` when it has one. The final state is shown when the iterable is exhausted;
    an error in the loop (or leaving it early) aborts instead (:meth:`Progress.abort`).
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, stream=stream, unit=unit, interval=interval,
                  redraw=redraw) as bar:
        for item in iterable:
            yield item
            bar.update()
