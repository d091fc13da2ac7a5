"""The Python SDK for the trainyard HTTP API.

    client = Client("http://127.0.0.1:8000", api_key)
    ds = client.datasets.upload("corpus.txt")            # waits for validation
    job = client.jobs.create({"dataset_id": ds.id, "model": {"preset": "tiny"}})
    for event in client.jobs.stream(job.id): ...          # live, resumes after a drop
    job = client.jobs.wait(job.id)

Calls retry with backoff on 429 and 5xx (honouring `Retry-After`) and on a connection
that failed before the request was sent (a 429 `quota_exceeded` is a refusal, not a rate
limit: it is not retried); errors raise TrainyardError with the API's code,
message and details. Only httpx, httpx-sse, tenacity and pydantic are needed: no torch.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from httpx_sse import EventSource, connect_sse
from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from trainyard.results import (
    TERMINAL,
    Checkpoint,
    Dataset,
    Event,
    Generation,
    Job,
    MetricPoint,
    Model,
    Page,
)

__all__ = ["TERMINAL", "Client", "TrainyardError"]

R = TypeVar("R", bound=BaseModel)
Progress = Callable[[int, int], None]  # (bytes sent, bytes in all)
RETRY_STATUSES = (429, 500, 502, 503, 504)


class TrainyardError(Exception):
    """An API error, with the envelope's code, message and details and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details

    @classmethod
    def from_response(cls, response: httpx.Response) -> TrainyardError:
        """The error a 4xx/5xx response carries (or its text when it is not the envelope)."""
        try:
            err = response.json()["error"]
            return cls(response.status_code, err["code"], err["message"], err.get("details"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:500] or "no body")


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait that a Retry-After header asks for (delta seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _ProgressFile:
    """A file that reports how much of it has been read (httpx streams multipart by read)."""

    def __init__(self, f: IO[bytes], total: int, callback: Progress) -> None:
        self.f, self.total, self.callback, self.sent = f, total, callback, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.f.read(size)
        self.sent += len(chunk)
        self.callback(self.sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self.sent = 0 if (offset, whence) == (0, 0) else self.sent
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def fileno(self) -> int:
        return self.f.fileno()


class Client:
    """Talks to one trainyard API as one project (the project of the API key).

    base_url and api_key default to TRAINYARD_API_URL and TRAINYARD_API_KEY.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("TRAINYARD_API_URL") or "http://127.0.0.1:8000"
        api_key = api_key or os.environ.get("TRAINYARD_API_KEY") or ""
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "trainyard-sdk"},
            timeout=timeout,
            transport=transport,
        )
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # transport

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable):
            asked = _retry_after(exc.response)
            if asked is not None:
                return min(asked, self.max_backoff)
        return float(wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)(state))

    def send(
        self,
        method: str,
        path: str,
        *,
        safe_to_repeat: bool | None = None,
        build: Callable[[], dict[str, Any]] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with retries; returns the response, raises TrainyardError on 4xx/5xx.

        A request is repeated after a 5xx only when it is safe to (GET, DELETE, or a request
        with an Idempotency-Key); 429 and a connection refused are always retried, since the
        server did nothing. `build` makes fresh keyword arguments per try (an upload's file).
        With `stream` the body is left unread: the caller reads and closes the response.
        """
        if safe_to_repeat is None:
            headers = kwargs.get("headers") or {}
            safe_to_repeat = method in ("GET", "HEAD", "DELETE") or "Idempotency-Key" in headers

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, _Retryable):
                if exc.response.status_code == 429:
                    return TrainyardError.from_response(exc.response).code != "quota_exceeded"
                return bool(safe_to_repeat)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                return True
            return isinstance(exc, httpx.TransportError) and bool(safe_to_repeat)

        def attempt() -> httpx.Response:
            args = {**kwargs, **(build() if build else {})}
            request = self.http.build_request(method, path, **args)
            response = self.http.send(request, stream=stream)
            if response.status_code in RETRY_STATUSES:
                response.read()
                raise _Retryable(response)
            return response

        try:
            response = Retrying(
                retry=retry_if_exception(retryable),
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                reraise=True,
            )(attempt)
        except _Retryable as exc:
            response = exc.response
        if response.status_code >= 400:
            response.read()
            response.close()
            raise TrainyardError.from_response(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call; the decoded JSON body (None when empty)."""
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    def get(self, cls: type[R], path: str, **kwargs: Any) -> R:
        """GET a path as a typed result."""
        return cls.model_validate(self.request("GET", path, **kwargs))

    # Plain-dict calls of the first SDK, kept for the scripts that use them.

    def upload_dataset(self, file: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a dataset file, without waiting for its validation."""
        return self.datasets.upload(file, name=name, wait=False).model_dump(mode="json")

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset."""
        return dict(self.request("GET", f"/v1/datasets/{dataset_id}"))

    def clean_dataset(self, dataset_id: str, **options: Any) -> dict[str, Any]:
        """Start cleaning a dataset into a new one (options as `POST .../clean` takes them)."""
        return dict(self.request("POST", f"/v1/datasets/{dataset_id}/clean", json=options))

    def dataset_content(self, dataset_id: str, target: str | Path) -> Path:
        """Download a dataset's text to a file, streamed."""
        path = Path(target)
        with self.http.stream("GET", f"/v1/datasets/{dataset_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                raise TrainyardError.from_response(response)
            with path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return path

    def wait_dataset(self, dataset_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Poll until the dataset is validated (ready or invalid)."""
        return self.datasets.wait(dataset_id, timeout=timeout).model_dump(mode="json")

    def create_job(
        self, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Submit a JobSpec."""
        return self.jobs.create(spec, idempotency_key=idempotency_key).model_dump(mode="json")

    def job(self, job_id: str) -> dict[str, Any]:
        """One job with its progress."""
        return dict(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return dict(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def pause_job(self, job_id: str) -> dict[str, Any]:
        """Checkpoint a job and free its nodes (idempotent)."""
        return dict(self.request("POST", f"/v1/jobs/{job_id}/pause"))

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """Put a paused job back in the queue (idempotent)."""
        return dict(self.request("POST", f"/v1/jobs/{job_id}/resume"))

    def wait_job(self, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Poll until the job ends, or the timeout passes (then the job as it stands)."""
        try:
            return self.jobs.wait(job_id, timeout=timeout).model_dump(mode="json")
        except TimeoutError:
            return self.job(job_id)

    # cluster (admin keys)

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes, their free slots and running attempts."""
        return list(self.request("GET", "/v1/nodes")["data"])

    def quota(self, project: str) -> dict[str, Any]:
        """A project's quota and use."""
        return dict(self.request("GET", f"/v1/quotas/{project}"))

    def set_quota(self, project: str, **limits: int | None) -> dict[str, Any]:
        """Set a project's quota (max_running_slots, max_queued_jobs, max_storage_bytes,
        best_priority); a limit left out is lifted."""
        return dict(self.request("PUT", f"/v1/quotas/{project}", json=limits))

    def events(self, job_id: str, after: int | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of the job's event log."""
        return self.jobs.events(job_id, after=after, limit=limit).model_dump(mode="json")

    def metrics(self, job_id: str) -> dict[str, list[dict[str, float]]]:
        """The job's metric series."""
        series = self.jobs.metrics(job_id)
        return {name: [p.model_dump() for p in points] for name, points in series.items()}

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's checkpoints."""
        return [c.model_dump() for c in self.jobs.checkpoints(job_id)]

    def watch(self, job_id: str, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """Yield the job each poll until it ends."""
        while True:
            job = self.job(job_id)
            yield job
            if job["status"] in TERMINAL:
                return
            time.sleep(interval)

    def model(self, model_id: str) -> dict[str, Any]:
        """One model and its files."""
        return dict(self.request("GET", f"/v1/models/{model_id}"))

    def download(self, model_id: str, name: str, target: str | Path) -> Path:
        """Download one model file to a path."""
        return self.models.download(model_id, name, target)

    def generate(self, model_id: str, prompt: str, **options: Any) -> str:
        """Sample a continuation of the prompt."""
        return self.models.generate(model_id, prompt, **options).text


class Datasets:
    """`/v1/datasets`: upload, list, show, delete."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        on_progress: Progress | None = None,
        wait: bool = True,
        timeout: float = 600.0,
    ) -> Dataset:
        """Upload a file (streamed from disk); with wait, return it once validated, with
        its validation report (status ready or invalid, errors with line numbers)."""
        path = Path(path)
        total = path.stat().st_size
        files: builtins.list[IO[bytes]] = []

        def build() -> dict[str, Any]:
            f = path.open("rb")
            files.append(f)
            body: Any = _ProgressFile(f, total, on_progress) if on_progress else f
            part = {"file": (path.name, body, "application/octet-stream")}
            return {"files": part, "data": {"name": name} if name else None}

        try:
            response = self.client.send("POST", "/v1/datasets", build=build)
        finally:
            for f in files:
                f.close()
        dataset = Dataset.model_validate(response.json())
        return self.wait(dataset.id, timeout=timeout) if wait else dataset

    def get(self, dataset_id: str) -> Dataset:
        """One dataset with its validation report."""
        return self.client.get(Dataset, f"/v1/datasets/{dataset_id}")

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Dataset]:
        """One page of the project's datasets, newest first."""
        params = {"limit": limit, **({"after": after} if after else {})}
        return self.client.get(Page[Dataset], "/v1/datasets", params=params)

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset."""
        self.client.send("DELETE", f"/v1/datasets/{dataset_id}")

    def wait(self, dataset_id: str, *, timeout: float = 600.0, poll: float = 0.3) -> Dataset:
        """Poll until validation ends (ready or invalid); TimeoutError past the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            dataset = self.get(dataset_id)
            if dataset.status not in ("validating", "cleaning"):
                return dataset
            if time.monotonic() > deadline:
                raise TimeoutError(f"dataset {dataset_id} still validating after {timeout}s")
            time.sleep(poll)


class Jobs:
    """`/v1/jobs`: create, list, show, cancel, pause, resume, wait, stream, metrics."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a JobSpec. Every call carries an Idempotency-Key (a fresh one unless
        given), so the retries of one call never make two jobs."""
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        response = self.client.send("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        return Job.model_validate(response.json())

    def get(self, job_id: str) -> Job:
        """One job with its status and progress."""
        return self.client.get(Job, f"/v1/jobs/{job_id}")

    def list(
        self, *, status: str | None = None, limit: int = 20, after: str | None = None
    ) -> Page[Job]:
        """One page of the project's jobs, newest first, optionally by status."""
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("status", status), ("after", after)) if v})
        return self.client.get(Page[Job], "/v1/jobs", params=params)

    def _act(self, job_id: str, action: str) -> Job:
        # Cancel, pause and resume are idempotent, so a retry after a 5xx is safe.
        body = self.client.request("POST", f"/v1/jobs/{job_id}/{action}", safe_to_repeat=True)
        return Job.model_validate(body)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (idempotent)."""
        return self._act(job_id, "cancel")

    def pause(self, job_id: str) -> Job:
        """Pause a running job: it checkpoints and frees its nodes."""
        return self._act(job_id, "pause")

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again; it resumes from its checkpoint."""
        return self._act(job_id, "resume")

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 1.0) -> Job:
        """Poll until the job ends; TimeoutError when the timeout passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll)

    def events(self, job_id: str, *, after: int | None = None, limit: int = 100) -> Page[Event]:
        """One page of the job's event log, oldest first."""
        params = {"limit": limit, **({"after": after} if after is not None else {})}
        return self.client.get(Page[Event], f"/v1/jobs/{job_id}/events", params=params)

    def stream(self, job_id: str, *, after: int = 0, max_reconnects: int = 20) -> Iterator[Event]:
        """Follow the job's events live (SSE) until the job ends. After a dropped
        connection it reconnects with the last event id, so no event is lost or repeated."""
        last, drops = after, 0
        while True:
            try:
                with connect_sse(
                    self.client.http,
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(self.client.http.timeout.connect, read=None),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise TrainyardError.from_response(source.response)
                    for sse in source.iter_sse():
                        if sse.event == "end":
                            return
                        if not sse.id:
                            continue
                        event = Event.model_validate_json(sse.data)
                        last, drops = event.id, 0
                        yield event
                return  # the server closed the stream without an end: the job is gone
            except httpx.TransportError:
                drops += 1
                if drops > max_reconnects:
                    raise
                time.sleep(min(self.client.max_backoff, self.client.backoff * 2**drops))

    def metrics(
        self, job_id: str, *, after_step: int = 0, names: builtins.list[str] | None = None
    ) -> dict[str, builtins.list[MetricPoint]]:
        """The job's metric series by name (loss, val_loss, lr, grad_norm, tokens_per_s, mfu),
        past a step and optionally only some names; every page, followed."""
        out: dict[str, builtins.list[MetricPoint]] = {}
        while True:
            params: dict[str, Any] = {"after_step": after_step}
            if names:
                params["name"] = names
            body = self.client.request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
            for name, points in body["series"].items():
                out.setdefault(name, []).extend(MetricPoint.model_validate(p) for p in points)
            last = body.get("last_step")
            if not body.get("has_more") or last is None or last <= after_step:
                return out
            after_step = int(last)

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The job's checkpoints with their step and metrics."""
        return self.client.get(Page[Checkpoint], f"/v1/jobs/{job_id}/checkpoints").data


class Models:
    """`/v1/models`: list, show, download, generate and chat."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, model_id: str) -> Model:
        """One model and its files."""
        return self.client.get(Model, f"/v1/models/{model_id}")

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Model]:
        """One page of the project's models, newest first."""
        params = {"limit": limit, **({"after": after} if after else {})}
        return self.client.get(Page[Model], "/v1/models", params=params)

    def download(
        self,
        model_id: str,
        name: str,
        target: str | Path,
        *,
        on_progress: Progress | None = None,
    ) -> Path:
        """Download one model file (model.safetensors, config.json, tokenizer.json) to a
        path; the file appears whole or not at all."""
        target = Path(target)
        partial = target.with_name(target.name + ".part")
        http = self.client.http
        with http.stream("GET", f"/v1/models/{model_id}/files/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise TrainyardError.from_response(response)
            total = int(response.headers.get("content-length") or 0)
            with partial.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    if on_progress:
                        on_progress(response.num_bytes_downloaded, total)
        partial.replace(target)
        return target

    def generate(self, model_id: str, prompt: str, **options: Any) -> Generation:
        """Sample a continuation of a prompt (options: max_new_tokens, temperature, top_k,
        top_p, seed)."""
        body = {"prompt": prompt, **options}
        reply = self.client.request(
            "POST", f"/v1/models/{model_id}/generate", json=body, safe_to_repeat=True
        )
        return Generation.model_validate(reply)

    def chat_stream(
        self,
        model: str,
        messages: builtins.list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: builtins.list[str] | None = None,
    ) -> Iterator[str]:
        """The assistant's reply to a conversation, piece by piece as it is sampled, from a
        chat model (an id or a name): `POST /v1/chat/completions` with `stream: true`."""
        options = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": stop,
        }
        body = {
            "model": model,
            "messages": messages,
            "stream": True,
            **{name: value for name, value in options.items() if value is not None},
        }
        response = self.client.send(
            "POST", "/v1/chat/completions", json=body, safe_to_repeat=True, stream=True
        )
        try:
            for sse in EventSource(response).iter_sse():
                if sse.data == "[DONE]":
                    return
                chunk = json.loads(sse.data)
                if "error" in chunk:  # sampling failed after the stream had begun
                    err = chunk["error"]
                    raise TrainyardError(response.status_code, err["code"], err["message"])
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        yield choice["delta"]["content"]
        finally:
            response.close()

    def chat(
        self, model_id: str, messages: builtins.list[dict[str, str]], **options: Any
    ) -> Generation:
        """The assistant's reply to a conversation, from a fine-tuned chat model."""
        body = {"messages": messages, **options}
        reply = self.client.request(
            "POST", f"/v1/models/{model_id}/generate", json=body, safe_to_repeat=True
        )
        return Generation.model_validate(reply)
