"""The batch thread: the scheduler's work at a lower CPU priority than the requests."""

from __future__ import annotations

import os
import threading

import pytest

from warehouse.batch import BatchThread


def nice_here() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


@pytest.fixture
def make_batch():
    made = []

    def make(nice: int) -> BatchThread:
        made.append(BatchThread(nice))
        return made[-1]

    yield make
    for batch in made:
        batch.shutdown()


def test_work_runs_on_the_batch_thread_at_the_raised_nice_value(make_batch):
    before = nice_here()
    batch = make_batch(5)

    name, nice = batch.run(lambda: (threading.current_thread().name, nice_here()))

    assert name.startswith("warehouse-batch")
    assert nice == min(19, before + 5)
    assert nice_here() == before  # the caller's thread keeps its priority


def test_a_nice_of_zero_leaves_the_priority_alone(make_batch):
    assert make_batch(0).run(nice_here) == nice_here()


def test_the_result_and_the_exception_of_the_work_reach_the_caller(make_batch):
    batch = make_batch(3)

    assert batch.run(sum, [1, 2], start=10) == 13
    with pytest.raises(ZeroDivisionError):
        batch.run(lambda: 1 / 0)
    assert batch.run(str.upper, "still running") == "STILL RUNNING"


def test_every_call_runs_on_the_same_single_thread(make_batch):
    batch = make_batch(1)
    idents: list[int] = []
    callers = [threading.Thread(target=lambda: idents.append(batch.run(threading.get_ident))) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert len(idents) == 8
    assert len(set(idents)) == 1
    assert threading.get_ident() not in idents
