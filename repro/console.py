"""The console, live progress and `runs/<name>/log.txt` of a stage command.

What a person watching a run sees and what the log keeps; nothing here decides what runs (that is
repro/pipeline.py). No stage reads the log: it is a record for people.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.control import Control
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

LOG_EVERY_S = 30.0  # a progress line per running task in log.txt this often


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class RunLog:
    """`runs/<name>/log.txt`: lines appended with a timestamp, from any thread. It is a record for
    people, not an artifact: no stage reads it, and a kill may leave its last line torn."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            for line in text.splitlines():
                if line.strip():
                    self._f.write(f"{_stamp()} {line.rstrip()}\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


class TeeConsole(Console):
    """The console (stderr; silent with --quiet), every line printed to it also in log.txt as
    plain text. Live-display redraws are not lines and are not logged."""

    def __init__(self, log: RunLog, **kwargs):
        super().__init__(**kwargs)
        self.log_file = log
        self._plain = Console(width=160, color_system=None, highlight=False, emoji=False, soft_wrap=True)

    def print(self, *objects, **kwargs) -> None:
        super().print(*objects, **kwargs)
        if objects and not any(isinstance(o, Control) for o in objects):
            with self._plain.capture() as cap:
                self._plain.print(*objects, **kwargs)
            self.log_file.write(cap.get())


def _rate(speed: float | None) -> str:
    if not speed:
        return "-"
    return f"{speed:.2f}/s" if speed >= 1 else f"{1 / speed:.1f} s each"


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item, for slow items such as the teacher's answers)."""

    def render(self, task: Task) -> Text:
        return Text(_rate(task.finished_speed or task.speed), style="progress.data.speed")


class LoggedProgress(Progress):
    """rich's Progress (hidden with --quiet), and in log.txt each task's count, rate, elapsed time
    and ETA every LOG_EVERY_S seconds while it runs and once when it ends."""

    def __init__(self, *columns, log: RunLog, every: float = LOG_EVERY_S, **kwargs):
        super().__init__(*columns, **kwargs)
        self._log, self._every = log, every
        self._first: dict = {}  # task -> its count when added (a resumed stage starts above 0)
        self._ended: set = set()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def add_task(self, description: str, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._first[task_id] = self._tasks[task_id].completed
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._end_if_finished(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._end_if_finished(task_id)

    def _end_if_finished(self, task_id) -> None:
        if task_id not in self._ended and self._tasks[task_id].finished:
            self.snapshot(task_id, final=True)

    def snapshot(self, task_id, final: bool = False) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None or task_id in self._ended:
                return
            if final:
                self._ended.add(task_id)
            elapsed = t.finished_time if t.finished_time is not None else (t.elapsed or 0.0)
            if t.fields.get("busy"):  # no count to show
                state = "done" if t.finished else "stopped before the end" if final else "running"
                line = f"  {t.description}: {state}, elapsed {_clock(elapsed)}"
            else:
                done_now = t.completed - self._first.get(task_id, 0)
                speed = done_now / elapsed if final and elapsed > 0 else t.speed
                eta = "" if t.finished or t.total is None else \
                    f", eta {_clock(t.time_remaining) if t.time_remaining is not None else '?'}"
                total = "?" if t.total is None else f"{t.total:g}"
                line = (f"  {t.description}: {t.completed:g}/{total} done, {_rate(speed)}, elapsed {_clock(elapsed)}"
                        f"{eta}" + ("" if not final or t.finished else " (stopped before the end)"))
        self._log.write(line)

    def log_open_tasks(self) -> None:
        for task_id in list(self._tasks):
            self.snapshot(task_id, final=True)

    def _tick(self) -> None:
        while not self._stop.wait(self._every):
            for task_id in list(self._tasks):
                self.snapshot(task_id)

    def start(self) -> None:
        super().start()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="progress-log", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        super().stop()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def busy(progress, description: str):
    """A task with no count for a stage that reports no per-item progress: elapsed time on the
    console, a line in log.txt every half minute and at its end."""
    task = progress.add_task(description, total=None, busy=True) if progress is not None else None
    yield
    if task is not None:
        progress.update(task, total=1, completed=1)


def print_notes(stage: str, notes: list[str], progress) -> None:
    """A stage's notes (what it skipped, counted or substituted), one dim line each."""
    if progress is not None:
        for note in notes:
            progress.console.print(f"  {stage}: {note}", style="dim", markup=False, highlight=False, soft_wrap=True)


def progress_display(console: TeeConsole, log: RunLog, quiet: bool) -> LoggedProgress:
    """The live progress of one stage command (use it in a `with`): items done/total, items per
    second (the stages put tokens/s in the description), elapsed time and ETA."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    # A 5-minute window for the rate: the teacher's answers can take a minute each.
    return LoggedProgress(*columns, log=log, console=console, transient=True, disable=quiet,
                          speed_estimate_period=300)
