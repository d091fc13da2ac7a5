"""A small Python SDK for the trainyard HTTP API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class TrainyardError(Exception):
    """An API error, with the envelope's code, message and details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class Client:
    """Talks to one trainyard API as one project (the project of the API key)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": response.text[:500]}
            raise TrainyardError(
                response.status_code,
                err.get("code", "error"),
                err.get("message", ""),
                err.get("details"),
            )
        return response.json() if response.content else None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call; raises TrainyardError on 4xx/5xx."""
        return self._check(self.http.request(method, path, **kwargs))

    # datasets

    def upload_dataset(
        self, file: str | Path | BinaryIO, name: str | None = None
    ) -> dict[str, Any]:
        """Upload a dataset file (streamed from disk)."""
        data = {"name": name} if name else None
        if isinstance(file, str | Path):
            with open(file, "rb") as f:
                files = {"file": (Path(file).name, f, "application/octet-stream")}
                return dict(self.request("POST", "/v1/datasets", files=files, data=data))
        return dict(
            self.request(
                "POST",
                "/v1/datasets",
                files={"file": ("upload", file, "application/octet-stream")},
                data=data,
            )
        )

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
                self._check(response)
            with path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return path

    def wait_dataset(self, dataset_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Poll until the dataset is validated or cleaned (ready or invalid)."""
        deadline = time.monotonic() + timeout
        while True:
            ds = self.dataset(dataset_id)
            if ds["status"] not in ("validating", "cleaning") or time.monotonic() > deadline:
                return ds
            time.sleep(0.2)

    # jobs

    def create_job(
        self, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Submit a JobSpec."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self.request("POST", "/v1/jobs", json=spec, headers=headers))

    def job(self, job_id: str) -> dict[str, Any]:
        """One job with its progress."""
        return dict(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return dict(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, after: int | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of the job's event log."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return dict(self.request("GET", f"/v1/jobs/{job_id}/events", params=params))

    def metrics(self, job_id: str) -> dict[str, list[dict[str, float]]]:
        """The job's metric series."""
        return dict(self.request("GET", f"/v1/jobs/{job_id}/metrics")["series"])

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's checkpoints."""
        return list(self.request("GET", f"/v1/jobs/{job_id}/checkpoints")["data"])

    def watch(self, job_id: str, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """Yield the job each poll until it ends."""
        while True:
            job = self.job(job_id)
            yield job
            if job["status"] in TERMINAL:
                return
            time.sleep(interval)

    def wait_job(self, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Poll until the job ends, or the timeout passes."""
        deadline = time.monotonic() + timeout
        for job in self.watch(job_id):
            if time.monotonic() > deadline:
                return job
        return job

    # models

    def model(self, model_id: str) -> dict[str, Any]:
        """One model and its files."""
        return dict(self.request("GET", f"/v1/models/{model_id}"))

    def download(self, model_id: str, name: str, target: str | Path) -> Path:
        """Download one model file to a path."""
        target = Path(target)
        with self.http.stream("GET", f"/v1/models/{model_id}/files/{name}") as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            with target.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return target

    def generate(self, model_id: str, prompt: str, **options: Any) -> str:
        """Sample a continuation of the prompt."""
        body = {"prompt": prompt, **options}
        return str(self.request("POST", f"/v1/models/{model_id}/generate", json=body)["text"])
