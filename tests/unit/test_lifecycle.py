"""The job state machine: legal moves happen with an event, illegal ones raise, terminal
states never change."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from api.errors import status_of
from domain.errors import IllegalTransition
from domain.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    fail,
    requeue,
    transition,
)
from domain.orm import Event, Job


class _NoRows:
    def scalars(self) -> list[Any]:
        return []


class Recorder(Session):
    """A session with no database: it only collects what the writers add (and its project
    has no webhooks, the one thing a status change looks up)."""

    def execute(self, *_: Any, **__: Any) -> Any:
        return _NoRows()

    @property
    def events(self) -> list[Event]:
        return [o for o in self.new if isinstance(o, Event)]


def job(status: JobStatus, **fields: Any) -> Job:
    return Job(id="job_1", status=status.value, attempt=1, cancel_requested=False, **fields)


LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in targets]
ILLEGAL = [
    (a, b)
    for a in JobStatus
    for b in JobStatus
    if a not in TERMINAL and a != b and b not in TRANSITIONS[a]
]


def test_every_status_has_its_moves_and_terminal_ones_have_none() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert all(TRANSITIONS[s] for s in JobStatus if s not in TERMINAL)


@pytest.mark.parametrize(("current", "wanted"), LEGAL)
def test_a_legal_move_changes_the_status_with_an_event(
    current: JobStatus, wanted: JobStatus
) -> None:
    session, j = Recorder(), job(current)
    transition(session, j, wanted, "because", attempt=1)
    assert j.status == wanted
    (event,) = session.events
    assert event.type == "status"
    assert event.message == "because"
    assert event.data == {"status": wanted.value, "previous": current.value, "attempt": 1}
    assert (j.finished_at is not None) == (wanted in TERMINAL)


@pytest.mark.parametrize(("current", "wanted"), ILLEGAL)
def test_an_illegal_move_raises_and_changes_nothing(current: JobStatus, wanted: JobStatus) -> None:
    session, j = Recorder(), job(current)
    with pytest.raises(IllegalTransition) as caught:
        transition(session, j, wanted, "because")
    assert j.status == current
    assert session.events == []
    assert caught.value.code == "illegal_transition"
    assert status_of(caught.value) == 409


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_job_never_changes(terminal: JobStatus) -> None:
    session, j = Recorder(), job(terminal)
    for wanted in JobStatus:
        transition(session, j, wanted, "too late")
    fail(session, j, "late", "too late")
    assert j.status == terminal
    assert j.error_code is None
    assert session.events == []


def test_the_same_status_again_is_a_no_op() -> None:
    session, j = Recorder(), job(JobStatus.CANCELLING)
    transition(session, j, JobStatus.CANCELLING, "again")
    assert session.events == []


def test_running_stamps_the_start_once() -> None:
    session, j = Recorder(), job(JobStatus.QUEUED)
    transition(session, j, JobStatus.RUNNING, "started")
    started = j.started_at
    assert started is not None
    transition(session, j, JobStatus.QUEUED, "lost")
    transition(session, j, JobStatus.RUNNING, "started again")
    assert j.started_at == started


def test_fail_keeps_the_code_and_message() -> None:
    session, j = Recorder(), job(JobStatus.PREPARING)
    fail(session, j, "invalid_dataset", "dataset ds_1 is invalid")
    assert (j.status, j.error_code, j.error_message) == (
        "failed",
        "invalid_dataset",
        "dataset ds_1 is invalid",
    )
    assert session.events[0].data["code"] == "invalid_dataset"


@pytest.mark.parametrize(
    ("tries", "cancel", "expected", "code"),
    [
        (1, False, JobStatus.QUEUED, None),
        (3, False, JobStatus.QUEUED, None),
        (4, False, JobStatus.FAILED, "node_lost"),
        (1, True, JobStatus.CANCELLED, None),
    ],
)
def test_requeue_retries_gives_up_or_honours_a_cancel(
    tries: int, cancel: bool, expected: JobStatus, code: str | None
) -> None:
    session, j = Recorder(), job(JobStatus.RUNNING)
    j.cancel_requested = cancel
    requeue(session, j, "attempt lost", tries=tries, limit=3)
    assert (j.status, j.error_code) == (expected, code)
    if code:
        assert j.error_message == "attempt lost; gave up after 3 retries"


def test_a_preempted_job_waits_and_runs_again() -> None:
    session, j = Recorder(), job(JobStatus.RUNNING)
    requeue(session, j, "preempted by job_2", tries=0, limit=0, status=JobStatus.PREEMPTED)
    assert j.status == JobStatus.PREEMPTED
    transition(session, j, JobStatus.RUNNING, "attempt 2 started")
    assert j.status == JobStatus.RUNNING
