"""The node worker's line to the API: buffered, retried, and never raising into training."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)
# Events per request: a replay after an outage goes in requests short enough to renew the
# attempt's lease well within the node timeout, even on a busy API.
BATCH = 200


class ApiUnavailable(Exception):
    """The API did not answer (or answered 5xx); the caller keeps its buffer and retries."""


class Conflict(Exception):
    """The API refused the request for good (4xx): for example a duplicate start."""


class Reporter:
    """Reports for one attempt, authenticated by that attempt's token."""

    def __init__(self, api_url: str, attempt_id: str, token: str) -> None:
        self.base = f"{api_url.rstrip('/')}/internal/attempts/{attempt_id}"
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
        self.pending: list[dict[str, Any]] = []
        self.next_seq = 1
        self.cancel = False

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(str(exc)) from exc
        if response.status_code >= 500:
            raise ApiUnavailable(f"{response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            raise Conflict(f"{response.status_code} {response.text[:500]}")
        return dict(response.json())

    def start(self, master_port: int | None = None) -> tuple[str, int] | None:
        """Claim the attempt; raises Conflict when it is not ours to run (duplicate, cancelled).

        Rank 0 of a gang brings the port it reserved; the other ranks wait here until rank 0
        has started, and get the rendezvous (master address, port). None for one node.
        """
        body = {"master_port": master_port} if master_port else {}
        while True:
            try:
                state = self._post("/start", body)
            except ApiUnavailable as exc:
                log.warning("API unavailable, retrying start: %s", exc)
                time.sleep(2)
                continue
            if state.get("cancel"):
                raise Conflict(f"the attempt is {state.get('status')}")
            if state.get("status") == "running":
                if state.get("master_port"):
                    return str(state["master_addr"]), int(state["master_port"])
                return None
            time.sleep(0.5)  # waiting for rank 0 of the gang

    def add(self, events: list[dict[str, Any]]) -> None:
        """Queue trainer events; each gets the next sequence number."""
        for event in events:
            self.pending.append({"seq": self.next_seq, "event": event})
            self.next_seq += 1

    def flush(self) -> bool:
        """Send what is queued (also a heartbeat); False while the API is away."""
        try:
            while True:
                batch = self.pending[:BATCH]
                state = self._post("/events", {"events": batch})
                self.cancel = bool(state.get("cancel"))
                acked = int(state.get("last_seq", 0))
                self.pending = [p for p in self.pending if p["seq"] > acked]
                if self.pending and state.get("status") != "running":
                    # The attempt has ended (declared lost, stopped): the API stores no more
                    # of its events, and sending them again would never end.
                    log.warning(
                        "attempt is %s; dropping %d events the API no longer takes",
                        state.get("status"),
                        len(self.pending),
                    )
                    self.pending = []
                if not self.pending or len(batch) < BATCH:
                    return True
        except ApiUnavailable as exc:
            log.warning("API unavailable; %d events buffered: %s", len(self.pending), exc)
            return False
        except Conflict as exc:
            log.error("API refused events, dropping them: %s", exc)
            self.pending, self.cancel = [], True
            return False

    def finish(
        self,
        exit_code: int | None,
        log_tail: str,
        reason: str | None,
        *,
        preempted: bool = False,
        deadline_s: float = 3600.0,
    ) -> None:
        """Deliver the remaining events and the outcome, retrying while the API is away."""
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            if self.pending:
                self.flush()
            if not self.pending:
                try:
                    self._post(
                        "/finish",
                        {
                            "exit_code": exit_code,
                            "log_tail": log_tail,
                            "reason": reason,
                            "preempted": preempted,
                        },
                    )
                    return
                except ApiUnavailable as exc:
                    log.warning("API unavailable, retrying finish: %s", exc)
                except Conflict as exc:
                    log.error("API refused finish: %s", exc)
                    return
            time.sleep(2)
        log.error("gave up reporting the end of the attempt; the reconciler will settle it")

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self.client.close()
