"""The job lifecycle: allowed transitions succeed and stamp times; every other one raises."""

from __future__ import annotations

import pytest

from openrft.jobs.model import (
    ENDED,
    TRANSITIONS,
    IllegalTransition,
    Job,
    JobConflict,
    JobStatus,
)

S = JobStatus


def job(status: JobStatus = S.QUEUED, **changes) -> Job:
    return Job(id="job-000000000001", name="t", status=status, config={}, **changes)


@pytest.mark.parametrize(
    ("start", "target"),
    [(a, b) for a in JobStatus for b in JobStatus if b in TRANSITIONS[a]],
)
def test_allowed_transitions(start, target):
    moved = job(start).moved_to(target)
    assert moved.status is target
    assert (moved.ended_at is not None) == (target in ENDED)


@pytest.mark.parametrize(
    ("start", "target"),
    [(a, b) for a in JobStatus for b in JobStatus if b not in TRANSITIONS[a]],
)
def test_illegal_transitions_raise(start, target):
    with pytest.raises(IllegalTransition) as caught:
        job(start).moved_to(target)
    assert isinstance(caught.value, JobConflict) and caught.value.status == 409
    assert start.value in str(caught.value) and target.value in str(caught.value)


def test_the_lifecycle_a_stop_and_resume_take():
    # Queued -> InProgress -> Stopping -> Stopped -> Queued -> InProgress -> Completed
    path = [S.IN_PROGRESS, S.STOPPING, S.STOPPED, S.QUEUED, S.IN_PROGRESS, S.COMPLETED]
    current = job()
    for target in path:
        current = current.moved_to(target)
    assert current.status is S.COMPLETED and TRANSITIONS[S.COMPLETED] == frozenset()


def test_requeue_clears_the_last_end():
    failed = job(S.IN_PROGRESS, pid=42).moved_to(S.FAILED, failure_message="boom")
    queued = failed.moved_to(S.QUEUED)
    assert (queued.failure_message, queued.ended_at, queued.pid) == (None, None, None)
    assert queued.queued_at >= failed.queued_at
