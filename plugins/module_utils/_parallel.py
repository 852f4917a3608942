# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Work spread over threads one way: every task done, or the first failure stops the rest and is the one raised.

The dump writes tables and the checks count rows with several workers; a failure
in one must stop the others soon and must not be hidden behind what they raise
because they were stopped.
"""

import queue
import threading


def drain(tasks, workers, work, setup=None, teardown=None):
    """Run ``work(state, task, abort)`` for every task in ``min(workers, len(tasks))`` threads; returns once all stopped.

    ``state`` is the worker's own, made by ``setup()`` when it takes its first
    task (a worker left without one opens nothing, e.g. no psql session) and
    given to ``teardown(state)`` whatever happens. After a failure ``abort`` is
    set and the other workers take no further task; a ``work`` that checks it
    may stop midway. The first failure is re-raised: it is recorded before
    ``abort`` is set, so whatever a worker raises because it was stopped comes
    after the failure that stopped it.
    """
    todo = queue.Queue()
    for task in tasks:
        todo.put(task)
    abort = threading.Event()
    failures = []

    def fail(exc):
        failures.append(exc)
        abort.set()

    def worker():
        opened = []
        try:
            while not abort.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    break
                if not opened:
                    opened.append(setup() if setup else None)
                work(opened[0], task, abort)
        except BaseException as exc:  # the first failure stops everyone (before a slow teardown); the calling thread re-raises it
            fail(exc)
        if opened and teardown:
            try:
                teardown(opened[0])
            except BaseException as exc:  # a state that cannot be closed is a failure too, not a traceback on stderr
                fail(exc)

    threads = [threading.Thread(target=worker) for _worker in range(min(workers, len(tasks)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
