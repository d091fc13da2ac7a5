"""The error envelope for 401, 404, 405 and 422, served by the real app on a migrated SQLite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from domain import migrate
from domain.db import get_async_engine, get_async_sessionmaker, get_engine, get_sessionmaker
from domain.keys import create_key
from trainyard.messaging import get_app
from trainyard.settings import get_settings


def clear_caches() -> None:
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (
        get_settings,
        get_engine,
        get_sessionmaker,
        get_async_engine,
        get_async_sessionmaker,
        get_app,
    ):
        cached.cache_clear()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """A TestClient on a fresh migrated SQLite database, and an API key for it."""
    tmp_path = tmp_path_factory.mktemp("errors")
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("TRAINYARD_"):
                mp.delenv(name)
        mp.setenv("TRAINYARD_DATA_DIR", str(tmp_path / "data"))
        mp.setenv("TRAINYARD_DATABASE_URL", url)
        mp.setenv("TRAINYARD_STORAGE_ROOT", str(tmp_path / "storage"))
        clear_caches()
        migrate.upgrade(url)
        with get_sessionmaker()() as session:
            key = create_key(session=session, project_name="errors")
        try:
            with TestClient(create_app(), raise_server_exceptions=False) as client:
                yield client, key
        finally:
            clear_caches()


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the status and the envelope's shape; the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    # /v1/models is shared with the OpenAI API: its errors carry OpenAI's fields as well.
    shared = {"type", "param"} if response.request.url.path.startswith("/v1/models") else set()
    assert set(error) == {"code", "message", "details"} | shared
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ty_not_a_key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
)
def test_401_missing_or_bad_key(api: tuple[TestClient, str], headers: dict[str, str]) -> None:
    client, _ = api
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/datasets/ds_x"), ("POST", "/v1/jobs")]:
        envelope(client.request(method, path, headers=headers), 401, "unauthorized")


def test_401_comes_before_body_validation(api: tuple[TestClient, str]) -> None:
    client, _ = api
    response = client.post("/v1/jobs", json={"nonsense": True})
    envelope(response, 401, "unauthorized")


def test_the_key_itself_works(api: tuple[TestClient, str]) -> None:
    client, key = api
    response = client.get("/v1/jobs", headers=auth(key))
    assert response.status_code == 200
    assert response.json() == {"data": [], "has_more": False}


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/jobs/job_missing", "job"),
        ("/v1/datasets/ds_missing", "dataset"),
        ("/v1/models/mdl_missing", "model"),
        ("/v1/jobs/job_missing/events", "job"),
        ("/v1/jobs/job_missing/metrics", "job"),
        ("/v1/jobs/job_missing/checkpoints", "job"),
        ("/v1/models/mdl_missing/files/model.safetensors", "model"),
    ],
)
def test_404_unknown_object_names_it(api: tuple[TestClient, str], path: str, kind: str) -> None:
    client, key = api
    code = "model_not_found" if kind == "model" else "not_found"
    error = envelope(client.get(path, headers=auth(key)), 404, code)
    object_id = path.split("/")[3]
    assert error["message"] == f"{kind} {object_id} not found"


def test_404_unknown_route(api: tuple[TestClient, str]) -> None:
    client, key = api
    envelope(client.get("/v1/nothing-here", headers=auth(key)), 404, "not_found")
    envelope(client.get("/v2/jobs"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/jobs", {"GET", "POST"}),
        ("PUT", "/v1/jobs/job_x", {"GET"}),
        ("GET", "/v1/jobs/job_x/cancel", {"POST"}),
        ("PATCH", "/v1/datasets/ds_x", {"GET", "DELETE"}),
    ],
)
def test_405_wrong_method_says_what_is_allowed(
    api: tuple[TestClient, str], method: str, path: str, allowed: set[str]
) -> None:
    client, key = api
    response = client.request(method, path, headers=auth(key))
    envelope(response, 405, "method_not_allowed")
    listed = {m.strip() for m in response.headers["allow"].split(",")}
    assert listed and listed <= allowed


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("DELETE", "/v1/jobs", {"GET", "POST"}), ("PATCH", "/v1/datasets/ds_x", {"GET", "DELETE"})],
)
def test_405_allow_lists_every_method_of_the_resource(
    api: tuple[TestClient, str], method: str, path: str, allowed: set[str]
) -> None:
    client, key = api
    response = client.request(method, path, headers=auth(key))
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"dataset_id": "ds_x", "epochs": 3}, "epochs", "unknown field"),
        ({"dataset_id": "ds_x", "training": {"epochs": 3}}, "training.epochs", "unknown field"),
        ({}, "dataset_id", "Field required"),
        ({"dataset_id": "ds_x", "training": {"max_steps": 0}}, "training.max_steps", None),
        ({"dataset_id": "ds_x", "resources": {"strategy": "zero3"}}, "resources.strategy", None),
    ],
)
def test_422_names_the_field(
    api: tuple[TestClient, str], body: dict[str, Any], field: str, message: str | None
) -> None:
    client, key = api
    error = envelope(client.post("/v1/jobs", json=body, headers=auth(key)), 422, "invalid_request")
    assert error["message"].startswith(f"{field}: ")
    assert error["details"][0]["field"] == field
    if message:
        assert error["details"][0]["message"] == message


def test_422_reports_every_problem_in_details(api: tuple[TestClient, str]) -> None:
    client, key = api
    body = {"dataset_id": "ds_x", "colour": "red", "training": {"max_steps": 0, "epochs": 2}}
    error = envelope(client.post("/v1/jobs", json=body, headers=auth(key)), 422, "invalid_request")
    fields = {d["field"] for d in error["details"]}
    assert {"colour", "training.max_steps", "training.epochs"} <= fields


def test_422_for_query_parameters(api: tuple[TestClient, str]) -> None:
    client, key = api
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "many"}, {"status": "sleeping"}):
        response = client.get("/v1/jobs", params=params, headers=auth(key))
        error = envelope(response, 422, "invalid_request")
        assert error["details"][0]["field"] == next(iter(params))


def test_422_for_a_body_that_is_not_json(api: tuple[TestClient, str]) -> None:
    client, key = api
    headers = {**auth(key), "Content-Type": "application/json"}
    response = client.post("/v1/jobs", content=b"{not json", headers=headers)
    envelope(response, 422, "invalid_request")


def test_422_for_generate_options(api: tuple[TestClient, str]) -> None:
    client, key = api
    response = client.post(
        "/v1/models/mdl_x/generate", json={"prompt": "", "max_new_tokens": 0}, headers=auth(key)
    )
    error = envelope(response, 422, "invalid_request")
    assert {"prompt", "max_new_tokens"} <= {d["field"] for d in error["details"]}


def test_422_for_a_body_that_is_not_json_names_the_body(api: tuple[TestClient, str]) -> None:
    client, key = api
    headers = {**auth(key), "Content-Type": "application/json"}
    response = client.post("/v1/jobs", content=b"{not json", headers=headers)
    error = envelope(response, 422, "invalid_request")
    assert error["details"][0]["field"] == "body"
