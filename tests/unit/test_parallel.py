"""_parallel.drain with real threads: every task done once, the real failure raised, every opened state closed."""
import threading
import types

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _parallel as parallel
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import Aborted


class States(object):
    """setup/teardown that record every state opened and closed, each state a distinct object."""

    def __init__(self):
        self.lock = threading.Lock()
        self.opened = []
        self.closed = []

    def setup(self):
        state = {"thread": threading.get_ident(), "tasks": []}
        with self.lock:
            self.opened.append(state)
        return state

    def teardown(self, state):
        with self.lock:
            self.closed.append(state)


def test_every_task_is_done_once_in_a_state_per_worker():
    states = States()
    results = {}

    def work(state, task, abort):
        assert state["thread"] == threading.get_ident() and not abort.is_set()
        state["tasks"].append(task)
        results[task] = task * task

    parallel.drain(list(range(200)), 4, work, states.setup, states.teardown)
    assert results == dict((n, n * n) for n in range(200))
    assert 1 <= len(states.opened) <= 4
    assert len(set(state["thread"] for state in states.opened)) == len(states.opened)
    assert sorted(task for state in states.opened for task in state["tasks"]) == list(range(200))
    assert sorted(map(id, states.closed)) == sorted(map(id, states.opened))


def test_no_more_threads_than_tasks_and_none_without_tasks():
    states = States()
    done = []
    parallel.drain(["only"], 8, lambda state, task, abort: done.append((state["thread"], task)), states.setup, states.teardown)
    assert [task for _thread, task in done] == ["only"] and len(states.opened) == 1 and states.closed == states.opened
    parallel.drain([], 8, lambda state, task, abort: done.append(task), states.setup, states.teardown)
    assert len(done) == 1 and len(states.opened) == 1


def test_the_real_failure_is_raised_not_the_aborts_it_caused():
    """Two workers are mid-task when the third fails: one stops on ``abort`` with Aborted (a table's copy), one
    finishes its task (a row count); neither takes another task, and the real error is the one raised."""
    states = States()
    waiting = threading.Semaphore(0)
    done = []

    def work(state, task, abort):
        state["tasks"].append(task)
        if task in ("copy", "count"):
            waiting.release()
            if not abort.wait(60):  # a guard against hanging, never reached when abort is set
                raise AssertionError("abort was never set")
            if task == "copy":
                raise Aborted("stopped because another worker failed")
        if task == "bad":
            waiting.acquire()
            waiting.acquire()
            raise BackupError("pg_dump of data/0002.sql failed: disk full")
        done.append(task)

    with pytest.raises(BackupError) as raised:
        parallel.drain(["copy", "count", "bad"] + ["later"] * 20, 3, work, states.setup, states.teardown)
    assert not isinstance(raised.value, Aborted) and str(raised.value) == "pg_dump of data/0002.sql failed: disk full"
    assert done == ["count"]
    assert sorted(task for state in states.opened for task in state["tasks"]) == ["bad", "copy", "count"]
    assert len(states.opened) == 3 and sorted(map(id, states.closed)) == sorted(map(id, states.opened))


def test_the_failure_is_recorded_before_abort_wakes_the_others(monkeypatch):
    """Why the first failure in time is the real one: here abort's first ``set`` returns only after the workers it
    stopped recorded their Aborted and tore down, which would put them first if the failure were recorded after it."""
    stopped = threading.Semaphore(0)

    class LateSet(threading.Event):
        def set(self):
            first = not self.is_set()
            threading.Event.set(self)
            if first:
                stopped.acquire()
                stopped.acquire()

    monkeypatch.setattr(parallel, "threading", types.SimpleNamespace(Thread=threading.Thread, Event=LateSet))
    waiting = threading.Semaphore(0)

    def work(state, task, abort):
        state.append(task)
        if task == "long":
            waiting.release()
            if not abort.wait(60):  # a guard against hanging, never reached when abort is set
                raise AssertionError("abort was never set")
            raise Aborted("stopped because another worker failed")
        waiting.acquire()
        waiting.acquire()
        raise BackupError("pg_dump of data/0002.sql failed: disk full")

    def teardown(state):
        if state == ["long"]:
            stopped.release()

    with pytest.raises(BackupError) as raised:
        parallel.drain(["long", "long", "bad"], 3, work, list, teardown)
    assert not isinstance(raised.value, Aborted) and "disk full" in str(raised.value)


def test_the_failure_stops_the_others_before_its_worker_tears_down():
    """A teardown may be slow (a psql session gets 30 s to end): the others must not wait for it to stop."""
    seen = {}

    def work(_state, task, abort):
        seen["abort"] = abort
        raise BackupError("counting rows of public.ventas failed")

    def teardown(_state):
        seen["set_before_teardown"] = seen["abort"].is_set()

    with pytest.raises(BackupError, match="counting rows of public.ventas failed"):
        parallel.drain(["ventas"], 1, work, dict, teardown)
    assert seen["set_before_teardown"] is True


def test_a_failing_setup_is_raised_and_nothing_is_torn_down():
    closed = []

    def setup():
        raise BackupError("connecting to database 'shop' failed")

    with pytest.raises(BackupError, match="connecting to database 'shop' failed"):
        parallel.drain(["a", "b"], 2, lambda state, task, abort: None, setup, closed.append)
    assert closed == []


def test_a_failing_teardown_is_raised_after_the_work_succeeded():
    done = []

    def teardown(_state):
        raise BackupError("closing the session failed")

    with pytest.raises(BackupError, match="closing the session failed"):
        parallel.drain(["a", "b", "c"], 1, lambda state, task, abort: done.append(task), dict, teardown)
    assert done == ["a", "b", "c"]


def test_without_setup_the_state_is_none_and_nothing_is_torn_down():
    states = []
    parallel.drain([1, 2, 3], 2, lambda state, task, abort: states.append(state))
    assert states == [None, None, None]


def test_a_worker_that_gets_no_task_opens_no_state(monkeypatch):
    """The second thread starts only once the first took the last task, so it finds the queue empty."""
    last_taken = threading.Event()

    class LateThread(threading.Thread):
        created = []

        def __init__(self, **kwargs):
            threading.Thread.__init__(self, **kwargs)
            LateThread.created.append(self)

        def run(self):
            if self is not LateThread.created[0]:
                last_taken.wait()
            threading.Thread.run(self)

    monkeypatch.setattr(parallel, "threading", types.SimpleNamespace(Thread=LateThread, Event=threading.Event))
    states = States()

    def work(state, task, abort):
        state["tasks"].append(task)
        if task == 3:
            last_taken.set()

    parallel.drain([1, 2, 3], 2, work, states.setup, states.teardown)
    assert len(LateThread.created) == 2 and not any(thread.is_alive() for thread in LateThread.created)
    assert [state["tasks"] for state in states.opened] == [[1, 2, 3]]
    assert states.closed == states.opened
