"""Live progress of a campaign that runs in this process (``aiida-mlff campaign run``).

How it is wired: the campaign and its active-learning child keep a ``mlff_progress`` extra up to date at every step
(see :data:`PROGRESS_EXTRA`). The work chains report every step on the ``aiida`` logger, in this thread, because
``run_get_node`` runs the whole campaign here. :func:`live_progress` adds a logging handler to that logger: every
record (a report line, at REPORT level) makes it find the campaign node (the root of the process that logged), read
the extras and redraw the display. Between report lines (a pw.x job can run for minutes without one), a small
timer thread redraws the last snapshot every second, so the elapsed time keeps moving; it never touches the
database, which belongs to the main thread. On a terminal the display is a tqdm bar over the rounds; otherwise a
plain line is printed whenever the state changes. AiiDA's own report lines are hidden from the terminal (they are
still stored with the nodes: ``verdi process report``) unless ``verbose`` is set, when they are printed above the
bar.

The remaining time is an estimate, and marked as one: none is shown until a round has finished; then it is the mean
duration of the finished rounds after the first (the first also samples and runs the first active learning, so it
stands in only while it is the only one) times the rounds still allowed, less the time spent in the current round.
Rounds are numbered as the campaign numbers them: round 0 is the first (initial) round and ``max_rounds`` further
rounds may follow, so the campaign may well stop earlier, when it converges or spends its label budget.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiida.common.log import LOG_LEVEL_REPORT

from aiida_mlff.workflows import PROGRESS_EXTRA  # the extra the campaign publishes its progress in

__all__ = ['PROGRESS_EXTRA', 'ProgressDisplay', 'ProgressHandler', 'RoundClock', 'describe', 'live_progress']

#: process label of the child whose iterations are shown during the ``active learning`` stage
ACTIVE_LEARNING_LABEL = 'ActiveLearningWorkChain'


def duration_text(seconds: float) -> str:
    """``'42 s'``, ``'12.5 min'`` or ``'3.2 h'``."""
    if seconds < 90:
        return f'{seconds:.0f} s'
    if seconds < 5400:
        return f'{seconds / 60:.1f} min'
    return f'{seconds / 3600:.1f} h'


@dataclass
class RoundClock:
    """When each round was first seen to start (monotonic seconds), and the estimate of the time left."""

    started: float
    round_starts: dict[int, float] = field(default_factory=dict)

    def observe(self, round_number: int, now: float) -> None:
        """Record the start of ``round_number`` (the run's start for the first round seen)."""
        if round_number not in self.round_starts:
            self.round_starts[round_number] = now if self.round_starts else self.started

    def round_durations(self) -> dict[int, float]:
        """Duration [s] of every finished round, by round number."""
        order = sorted(self.round_starts)
        return {a: self.round_starts[b] - self.round_starts[a] for a, b in itertools.pairwise(order)}

    def remaining(self, progress: Mapping[str, Any], now: float) -> tuple[float, float] | None:
        """``(seconds left, seconds per round)`` if every allowed round runs; None until a round has finished."""
        if progress.get('stage') == 'done':
            return None
        durations = self.round_durations()
        if not durations:
            return None
        later = [d for r, d in durations.items() if r != min(self.round_starts)]
        per_round = sum(later or durations.values()) / len(later or durations)
        current = int(progress.get('round', 0))
        spent = now - self.round_starts.get(current, now)
        after = max(int(progress.get('max_rounds', current + 1)) - 1 - current, 0)  # rounds are 0 .. max_rounds - 1
        return max(per_round - spent, 0.0) + per_round * after, per_round


def _since(iso_time: Any) -> str:
    """``' (since 14:02:31)'``: the local time a stage started (ISO time), or nothing when unknown."""
    from datetime import datetime

    try:
        return f' (since {datetime.fromisoformat(str(iso_time)).astimezone().strftime("%H:%M:%S")})'
    except (TypeError, ValueError):
        return ''


def _labels_text(used: Any, budget: Any) -> str:
    return f'labels {used}/{budget}' if budget is not None else f'labels {used} (no budget)'


def describe(
    progress: Mapping[str, Any] | None,
    child: Mapping[str, Any] | None = None,
    elapsed: float | None = None,
    remaining: tuple[float, float] | None = None,
) -> str:
    """One line of what the campaign is doing, from its ``mlff_progress`` extra (and its active-learning child's).

    Parameters
    ----------
    progress
        The campaign's extra: ``stage``, ``round``, ``max_rounds``, ``labels_used``, ``label_budget``, ``windows``,
        ``windows_untrusted``, ``stage_started``; None before the campaign published any.
    child
        The active-learning child's extra (``iteration``, ``max_iterations``, ``labels_used``), shown during the
        ``active learning`` stage.
    elapsed
        Seconds since the run started.
    remaining
        ``(seconds left, seconds per round)`` of :meth:`RoundClock.remaining`, or None (no estimate yet).
    """
    parts = ['starting'] if not progress else [str(progress.get('stage', '?')) + _since(progress.get('stage_started'))]
    if progress:
        parts.append(f'round {progress.get("round", "?")} (of at most {progress.get("max_rounds", "?")})')
        if child and progress.get('stage') == 'active learning':
            parts.append(
                f'iteration {child.get("iteration", "?")}/{child.get("max_iterations", "?")}'
                f' ({child.get("labels_used", "?")} labels)'
            )
        parts.append(_labels_text(progress.get('labels_used', 0), progress.get('label_budget')))
        if progress.get('windows') is not None:
            parts.append(f'windows {progress["windows"]} ({progress.get("windows_untrusted", "?")} untrusted)')
    if elapsed is not None:
        parts.append(f'elapsed {duration_text(elapsed)}')
    if remaining is not None:
        left, per_round = remaining
        parts.append(f'~{duration_text(left)} left (estimate: {duration_text(per_round)}/round, if every round runs)')
    elif progress and progress.get('stage') != 'done':
        parts.append('time left: no estimate until a round has finished')
    return ' | '.join(parts)


def read_progress(node) -> tuple[dict | None, dict | None]:
    """The ``mlff_progress`` extra of the campaign ``node`` and, while it learns actively, that of its child."""
    progress = node.base.extras.get(PROGRESS_EXTRA, None)
    child = None
    if isinstance(progress, dict) and progress.get('stage') == 'active learning':
        children = [c for c in node.called if c.process_label == ACTIVE_LEARNING_LABEL]
        if children:
            child = max(children, key=lambda c: c.ctime).base.extras.get(PROGRESS_EXTRA, None)
    return (progress if isinstance(progress, dict) else None), (child if isinstance(child, dict) else None)


class ProgressDisplay:
    """The display: a tqdm bar over the rounds on a terminal, else one plain line per change of state.

    Parameters
    ----------
    stream
        Where to write (default: standard output).
    tty
        Draw a live bar (default: whether ``stream`` is a terminal).
    clock
        Monotonic seconds (replaceable in tests).
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, clock: Callable[[], float] | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(tty if tty is not None else getattr(self.stream, 'isatty', lambda: False)())
        self.clock = clock or time.monotonic
        self.rounds = RoundClock(started=self.clock())
        self.progress: dict | None = None
        self.child: dict | None = None
        self._lock = threading.RLock()
        self._bar = None
        self._last_state: tuple | None = None

    def line(self) -> str:
        """The current state as one line (elapsed time and estimate included)."""
        now = self.clock()
        remaining = self.rounds.remaining(self.progress, now) if self.progress else None
        return describe(self.progress, self.child, now - self.rounds.started, remaining)

    def update(self, progress: dict | None, child: dict | None = None) -> None:
        """Take a new snapshot of the extras and redraw."""
        with self._lock:
            self.progress, self.child = progress, child
            if progress and progress.get('round') is not None:
                self.rounds.observe(int(progress['round']), self.clock())
            self._draw()

    def tick(self) -> None:
        """Redraw the last snapshot (the elapsed time moves); a plain display prints only changes of state."""
        with self._lock:
            if self.tty:
                self._draw()

    def message(self, text: str) -> None:
        """Print ``text`` (a report line) above the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Draw the last state and leave the bar on screen."""
        with self._lock:
            if self._bar is not None:
                self._draw()
                self._bar.close()
                self._bar = None

    def _state(self) -> tuple:
        """What a plain display prints a line for when it changes (not the clock)."""
        keys = ('stage', 'round', 'labels_used', 'windows', 'windows_untrusted')
        return tuple((self.progress or {}).get(k) for k in keys) + tuple((self.child or {}).get(k) for k in keys)

    def _draw(self) -> None:
        if not self.tty:
            state = self._state()
            if state != self._last_state:
                self._last_state = state
                print(self.line(), file=self.stream, flush=True)
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=1, file=self.stream, bar_format='{bar:12}| {desc}', dynamic_ncols=True, leave=True)
        progress = self.progress or {}
        total = max(int(progress.get('max_rounds') or 0), 1)
        self._bar.total = total
        self._bar.n = total if progress.get('stage') == 'done' else min(int(progress.get('round') or 0), total)
        self._bar.set_description_str(self.line(), refresh=False)
        self._bar.refresh()


class ProgressHandler(logging.Handler):
    """A handler on the ``aiida`` logger: each record redraws the display from the campaign's extras.

    The campaign is the root of the process that logged (the ``dbnode_id`` its logger adapter attaches to every
    record). With ``verbose`` the REPORT lines themselves are printed too.
    """

    def __init__(self, display: ProgressDisplay, verbose: bool = False):
        super().__init__(level=LOG_LEVEL_REPORT)  # reports, warnings and errors: not debug chatter
        self.display = display
        self.verbose = verbose
        self.root = None
        self._busy = False

    def emit(self, record: logging.LogRecord) -> None:
        """Print the report line (verbose only) and redraw from the campaign's extras."""
        if self._busy:  # reading the database may log; do not recurse
            return
        self._busy = True
        try:
            if self.verbose and record.levelno == LOG_LEVEL_REPORT:
                self.display.message(record.getMessage())
            root = self._campaign(record)
            if root is not None:
                self.display.update(*read_progress(root))
        except Exception:
            self.handleError(record)
        finally:
            self._busy = False

    def _campaign(self, record: logging.LogRecord):
        """The root process node of the record's process (found once, then kept)."""
        if self.root is None and record.__dict__.get('dbnode_id') is not None:
            from aiida import orm

            node = orm.load_node(record.__dict__['dbnode_id'])
            while getattr(node, 'caller', None) is not None:
                node = node.caller
            self.root = node
        return self.root


class _HideReports(logging.Filter):
    """Keep REPORT lines off the terminal handlers (they still reach the database handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != LOG_LEVEL_REPORT


def _is_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to the terminal: AiiDA's CLI handler or a stream handler (not a file or the DB)."""
    from aiida.orm.utils.log import DBLogHandler

    if isinstance(handler, DBLogHandler | logging.FileHandler | ProgressHandler):
        return False
    return isinstance(handler, logging.StreamHandler) or type(handler).__name__ == 'CliHandler'


def _tick_every(display: ProgressDisplay, interval: float, stop: threading.Event) -> None:
    """Redraw ``display`` every ``interval`` seconds until ``stop`` is set (the timer thread's body)."""
    while not stop.wait(interval):
        display.tick()


@contextlib.contextmanager
def live_progress(
    verbose: bool = False,
    stream: TextIO | None = None,
    tty: bool | None = None,
    interval: float = 1.0,
    clock: Callable[[], float] | None = None,
) -> Iterator[ProgressDisplay]:
    """Show the progress of the campaign run inside the ``with`` block; yield the display.

    Parameters
    ----------
    verbose
        Print AiiDA's report lines as well (above the bar); otherwise they are kept off the terminal.
    stream
        Where to write (default: standard output).
    tty
        Draw a live bar (default: whether ``stream`` is a terminal); a plain display prints a line per change.
    interval
        Seconds between redraws of the elapsed time (live bar only).
    clock
        Monotonic seconds (replaceable in tests).
    """
    display = ProgressDisplay(stream, tty, clock)
    handler = ProgressHandler(display, verbose)
    logger = logging.getLogger('aiida')
    hide = _HideReports()
    terminals = [h for h in logger.handlers if _is_terminal(h)]
    for terminal in terminals:
        terminal.addFilter(hide)
    logger.addHandler(handler)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick_every, args=(display, interval, stop), daemon=True)
    if display.tty:
        ticker.start()
    try:
        yield display
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        logger.removeHandler(handler)
        for terminal in terminals:
            terminal.removeFilter(hide)
        display.close()
