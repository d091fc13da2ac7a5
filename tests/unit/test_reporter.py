"""The node worker's reporter: a buffer the API no longer takes is dropped, not re-sent
forever.

The API here is an httpx transport that answers as the real one does for an attempt the
reconciler has declared lost (its events are skipped, `last_seq` stays, `cancel` is set):
making the real API do that at the moment a node holds more than a batch of events is
what the fault tests try, without being able to force it."""

from __future__ import annotations

import json
from typing import Any

import httpx

from workers.reporter import BATCH, Reporter


def lost_attempt_api(seen: list[tuple[str, int]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        seen.append((request.url.path.rsplit("/", 1)[-1], len(body.get("events", []))))
        return httpx.Response(200, json={"status": "lost", "cancel": True, "last_seq": 0})

    return httpx.MockTransport(answer)


def test_events_of_a_lost_attempt_are_dropped_and_the_end_is_reported() -> None:
    seen: list[tuple[str, int]] = []
    reporter = Reporter("http://api", "att_1", "token")
    reporter.client = httpx.Client(transport=lost_attempt_api(seen))
    events: list[dict[str, Any]] = [{"type": "step", "step": n} for n in range(2 * BATCH + 5)]
    reporter.add(events)

    assert reporter.flush() is True
    assert seen == [("events", BATCH)]  # one try, not the same batch forever
    assert reporter.pending == [] and reporter.cancel is True

    reporter.add([{"type": "preempted", "step": 2 * BATCH + 5}])
    reporter.finish(75, "", "cancelled", deadline_s=5)
    assert seen[1:] == [("events", 1), ("finish", 0)]
