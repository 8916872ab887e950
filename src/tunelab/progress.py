"""Progress on stderr, so stdout carries only results (answers, tables) and can be piped.

On a terminal: a rich bar with the elapsed time and an ETA. When stderr is not a terminal (a log
file, CI, `2>&1 | tee`), rich draws nothing, so a plain progress line is logged at a steady
interval instead: a 12-minute evaluation never looks like a hang.
"""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("tunelab.progress")
LOG_EVERY_SECONDS = 30.0


class LoggedProgress(Progress):
    """A rich Progress that also logs `description: done/total (share), elapsed, ETA` every
    `log_every` seconds when its console is not a terminal."""

    def __init__(self, *args, log_every: float = LOG_EVERY_SECONDS, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_every = log_every
        self._logged_at: dict[TaskID, float] = {}
        self._finished_logged: set[TaskID] = set()
        self.brief_rows: set[TaskID] = set()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_now_and_then(task_id)

    def update(self, task_id: TaskID, **changes) -> None:
        """As rich's, and a count set with `completed=` is logged like an advance."""
        super().update(task_id, **changes)
        if "completed" in changes or "advance" in changes:
            self._log_now_and_then(task_id)

    def _log_now_and_then(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        now = time.monotonic()
        task = self._tasks[task_id]
        last = self._logged_at.setdefault(task_id, now)
        if task.finished and task_id in self._finished_logged:
            return
        if task.finished and task_id in self.brief_rows and (task.elapsed or 0.0) < self.log_every:
            return  # a short row of another display (a trial's scoring): its end is no news
        if now - last < self.log_every and not task.finished:
            return
        if task.finished:
            self._finished_logged.add(task_id)
        self._logged_at[task_id] = now
        share = f" ({task.completed / task.total:.0%})" if task.total else ""
        eta = f", ETA {task.time_remaining:.0f} s" if task.time_remaining is not None and not task.finished else ""
        log.info("%s: %d/%s%s, %.0f s elapsed%s", task.description, task.completed,
                 int(task.total) if task.total else "?", share, task.elapsed or 0.0, eta)


    def start(self) -> None:
        super().start()
        _running.append(self)

    def stop(self) -> None:
        if self in _running:
            _running.remove(self)
        super().stop()


_running: list[LoggedProgress] = []  # a terminal shows one live display: later bars become its rows


class NestedProgress:
    """Progress started while another one runs (a trial's scoring inside the search display): its
    tasks are rows of the running display, removed when it ends, instead of a second live display."""

    def __init__(self, outer: LoggedProgress):
        self.outer, self.tasks_added = outer, []

    def __enter__(self) -> NestedProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        for task in self.tasks_added:
            self.outer.remove_task(task)

    def start(self) -> None:
        """Already shown by the running display."""

    def stop(self) -> None:
        self.__exit__()
        self.tasks_added = []

    def add_task(self, description: str, **kwargs) -> TaskID:
        task = self.outer.add_task(description, **kwargs)
        self.tasks_added.append(task)
        self.outer.brief_rows.add(task)
        return task

    def __getattr__(self, name: str):  # advance, update, tasks, console: the running display's
        return getattr(self.outer, name)


class SilentProgress:
    """The progress interface, showing nothing: for work too small to report (one served request)."""

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass


def progress_bar(log_every: float = LOG_EVERY_SECONDS) -> LoggedProgress | NestedProgress:
    if _running:
        return NestedProgress(_running[-1])
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                          log_every=log_every)
