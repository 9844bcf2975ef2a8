"""Several models' answers decoded at once on a CPU, each model on its share of the cores.

Why: llama.cpp's threads meet at a barrier after every op, and a small model's ops are many and
short, so on the 2-core machine two threads decode only 1.5-1.6x as fast as one (measured on the
tiny run's 270M student and 0.5B teacher). Two models side by side, one thread each, get through
the evaluate stage's decoding sooner than the same models one after another on two threads
(bench/eval_lanes.py measures both). A lane that runs out of models hands its threads to a lane
still decoding (the engine takes them at its next step), so the last model does not finish on
one core while the other idles.

What it does not change: any answer. Each model's requests go to one engine in the same order
and batch width as one model after another, and greedy text does not depend on the thread count
(tests/test_engine.py). What it does not do: run lanes with layers on a GPU, for a server's
model, or for the `llama` reference backend (evaluate decodes those one model at a time).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence


class Lanes:
    """`threads` split over `n` lanes; the share of a lane that finishes goes to the lane with
    the fewest threads (its engine, if one is open, switches at its next step)."""

    def __init__(self, threads: int, n: int):
        base, extra = divmod(threads, n)
        self.share = {i: base + (i < extra) for i in range(n)}
        self.engines: dict[int, object] = {}
        self.stop = threading.Event()  # set when a lane fails: the others stop after their next answer
        self._lock = threading.Lock()

    def threads(self, lane: int) -> int:
        with self._lock:
            return self.share[lane]

    @contextlib.contextmanager
    def attached(self, lane: int, engine):
        """While `engine` decodes for `lane`: threads the lane gains reach it."""
        with self._lock:
            self.engines[lane] = engine
            engine.set_threads(self.share[lane])  # the share may have grown while it loaded
        try:
            yield
        finally:
            with self._lock:
                self.engines.pop(lane, None)

    def finish(self, lane: int) -> None:
        with self._lock:
            n = self.share.pop(lane)
            if self.share:
                to = min(self.share, key=lambda k: (self.share[k], k))
                self.share[to] += n
                if to in self.engines:
                    self.engines[to].set_threads(self.share[to])


class Lane:
    """What one model's decoding needs from its lane: the threads to open its engine with, the
    engine's registration for more threads, and whether another lane failed."""

    def __init__(self, lanes: Lanes, i: int):
        self.lanes, self.i = lanes, i

    def threads(self) -> int:
        return self.lanes.threads(self.i)

    def attached(self, engine):
        return self.lanes.attached(self.i, engine)

    def stopped(self) -> bool:
        return self.lanes.stop.is_set()


def run(items: Sequence, work: Callable[[object, Lane], object], threads: int, n: int) -> list:
    """`work(item, lane)` for every item, `n` lanes at once, items taken in their order (put the
    longest first). Results in the items' order. The first error stops the other lanes (after
    their current answer) and is raised here, once every lane has ended."""
    lanes = Lanes(threads, n)
    queue, results, errors = list(enumerate(items)), [None] * len(items), []
    take = threading.Lock()

    def lane_main(i: int) -> None:
        try:
            while not lanes.stop.is_set():
                with take:
                    if not queue:
                        break
                    k, item = queue.pop(0)
                results[k] = work(item, Lane(lanes, i))
        except BaseException as e:  # noqa: BLE001  # re-raised in the calling thread
            errors.append(e)
            lanes.stop.set()
        finally:
            lanes.finish(i)

    workers = [threading.Thread(target=lane_main, args=(i,), name=f"evaluate-lane-{i}", daemon=True)
               for i in range(n)]
    for t in workers:
        t.start()
    try:
        for t in workers:
            while t.is_alive():
                t.join(0.5)  # a timeout, so that Ctrl-C reaches this thread
    except BaseException:
        lanes.stop.set()
        for t in workers:
            t.join()
        raise
    if errors:
        raise errors[0]
    return results
