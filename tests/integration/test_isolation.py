"""Projects are sealed off from each other: another project's id is a plain 404 everywhere."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.conftest import corpus
from tests.stack import Stack
from trainyard.client import Client, TrainyardError
from trainyard.ids import hash_secret, new_id

pytestmark = pytest.mark.integration

SPEC = {
    "model": {"preset": "tiny"},
    "training": {
        "max_steps": 5,
        "seq_len": 32,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 1,
        "eval_interval": 5,
        "eval_batches": 2,
        "checkpoint_interval": 5,
    },
    "resources": {"processes_per_node": 1, "accelerator": "cpu"},
}
SSE = {"Accept": "text/event-stream"}

# (method, path template, JSON body, extra headers): every route that takes an object id.
ROUTES = [
    pytest.param("GET", "/v1/datasets/{dataset}", None, {}, id="get-dataset"),
    pytest.param("DELETE", "/v1/datasets/{dataset}", None, {}, id="delete-dataset"),
    pytest.param("POST", "/v1/datasets/{dataset}/clean", {}, {}, id="clean-dataset"),
    pytest.param("GET", "/v1/datasets/{dataset}/content", None, {}, id="dataset-content"),
    pytest.param("GET", "/v1/jobs/{job}", None, {}, id="get-job"),
    pytest.param("POST", "/v1/jobs/{job}/cancel", None, {}, id="cancel-job"),
    pytest.param("POST", "/v1/jobs/{job}/pause", None, {}, id="pause-job"),
    pytest.param("POST", "/v1/jobs/{job}/resume", None, {}, id="resume-job"),
    pytest.param("GET", "/v1/jobs/{job}/events", None, {}, id="events"),
    pytest.param("GET", "/v1/jobs/{job}/events", None, SSE, id="events-stream"),
    pytest.param("GET", "/v1/jobs/{job}/metrics", None, {}, id="metrics"),
    pytest.param("GET", "/v1/jobs/{job}/checkpoints", None, {}, id="checkpoints"),
    pytest.param("GET", "/v1/models/{model}", None, {}, id="get-model"),
    pytest.param("GET", "/v1/models/{model}/files/model.safetensors", None, {}, id="download-file"),
    pytest.param(
        "POST",
        "/v1/models/{model}/generate",
        {"prompt": "the king", "max_new_tokens": 4, "temperature": 0.0},
        {},
        id="generate",
    ),
]
PREFIX = {"dataset": "ds", "job": "job", "model": "mdl"}
MODEL_SHOW = "/v1/models/{model_id}"
# Routes whose owner gets no 2xx on a finished job: deleting (later tests need the dataset),
# pausing and resuming a job that has succeeded (409; the pause tests cover the owner's).
NOT_FOR_THE_OWNER = {"delete-dataset", "pause-job", "resume-job"}
# Routes with an id in another shape, and routes that take no id of a project's object.
COVERED_ELSEWHERE = {
    ("GET", "/v1/tokenizers/{tokenizer_id}"),  # test_tokenizers covers another project's
    ("GET", "/v1/tokenizers/{tokenizer_id}/tokenizer.json"),
}


def public_routes_with_an_id() -> set[tuple[str, str]]:
    """(method, path) of every public route whose path holds a parameter."""
    from fastapi.routing import APIRoute

    from api.routers import datasets, jobs, models, tokenizers

    found = set()
    for module in (datasets, jobs, models, tokenizers):
        for route in module.router.routes:
            if isinstance(route, APIRoute) and "{" in route.path:
                found |= {(m, route.path) for m in route.methods}
    return found


def test_every_route_with_an_id_is_in_the_table() -> None:
    """A new route with an id must join ROUTES (or say where it is covered)."""
    listed = set()
    for param in ROUTES:
        method, path = param.values[0], str(param.values[1])
        # The table names the path as called: map its placeholder back to the route's.
        for kind in PREFIX:
            path = path.replace("{" + kind + "}", "{" + kind + "_id}")
        path = path.replace("/files/model.safetensors", "/files/{name}")
        # A model is shown, and generates, by its id, its name or a checkpoint's id (the
        # OpenAI API's way): path routes.
        generate = "/v1/models/{model_id}/generate"
        path = path.replace(generate, "/v1/models/{model_ref:path}/generate")
        listed.add((method, "/v1/models/{model_ref:path}" if path == MODEL_SHOW else path))
    missing = public_routes_with_an_id() - listed - COVERED_ELSEWHERE
    assert not missing, f"routes with an id and no cross-project case: {sorted(missing)}"


class Project:
    """One project's key, client and the objects it owns."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.key = stack.new_key(f"{name}-{secrets.token_hex(3)}")
        self.client = Client(stack.url, self.key)
        self.ids: dict[str, str] = {}

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.client.http.request(method, path, json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def projects(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, Project]:
    """Projects A and B, each with a dataset and a finished job; A also has a model."""
    folder = tmp_path_factory.mktemp("isolation")
    a, b = Project(stack, "iso-a"), Project(stack, "iso-b")
    for n, p in enumerate((a, b)):
        path = folder / f"corpus-{n}.txt"
        path.write_text(corpus(lines=600, seed=n))
        p.ids["dataset"] = str(p.client.upload_dataset(path)["id"])
    for p in (a, b):
        assert p.client.wait_dataset(p.ids["dataset"], timeout=120)["status"] == "ready"
        p.ids["job"] = str(p.client.create_job({"dataset_id": p.ids["dataset"], **SPEC})["id"])
    for p in (a, b):
        job = p.client.wait_job(p.ids["job"], timeout=300)
        assert job["status"] == "succeeded", (job, stack.log("node")[-3000:])
        p.ids["model"] = str(job["model_id"])
    return a, b


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Engine]:
    engine = create_engine(stack.env["TRAINYARD_DATABASE_URL"])
    yield engine
    engine.dispose()


def fill(path: str, ids: dict[str, str]) -> tuple[str, str]:
    """The path with the owner's id filled in, and the id used."""
    kind = path.split("{")[1].split("}")[0]
    return path.format(**{kind: ids[kind]}), ids[kind]


def assert_not_found(response: httpx.Response, object_id: str) -> dict[str, Any]:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    # /v1/models is shared with the OpenAI API, which names a missing model this way.
    shared = response.request.url.path.startswith("/v1/models/")
    assert body["error"]["code"] == ("model_not_found" if shared else "not_found")
    assert object_id in body["error"]["message"]
    return dict(body)


@pytest.mark.parametrize(("method", "path", "body", "headers"), ROUTES)
def test_another_projects_id_is_404(
    projects: tuple[Project, Project],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    a, b = projects
    url, object_id = fill(path, a.ids)
    assert_not_found(b.call(method, url, body, headers), object_id)
    # Nothing happened to A's objects.
    assert a.client.dataset(a.ids["dataset"])["status"] == "ready"
    assert a.client.job(a.ids["job"])["status"] == "succeeded"


@pytest.mark.parametrize(("method", "path", "body", "headers"), ROUTES)
def test_a_foreign_id_reads_exactly_like_a_missing_one(
    projects: tuple[Project, Project],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    a, b = projects
    url, real = fill(path, a.ids)
    kind = path.split("{")[1].split("}")[0]
    missing = new_id(PREFIX[kind])
    foreign = b.call(method, url, body, headers)
    absent = b.call(method, url.replace(real, missing), body, headers)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.text.replace(real, "ID") == absent.text.replace(missing, "ID")
    assert foreign.headers["content-type"] == absent.headers["content-type"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [r for r in ROUTES if r.id not in NOT_FOR_THE_OWNER],
)
def test_the_owner_reaches_every_route(
    projects: tuple[Project, Project],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    a, _ = projects
    url, _ = fill(path, a.ids)
    response = a.call(method, url, body, headers)
    assert response.status_code in (200, 201), response.text


def test_a_job_on_another_projects_dataset_is_404(projects: tuple[Project, Project]) -> None:
    a, b = projects
    before = b.client.request("GET", "/v1/jobs", params={"limit": 100})["data"]
    for spec in (
        {"dataset_id": a.ids["dataset"], **SPEC},
        {"dataset_id": b.ids["dataset"], "validation": {"dataset_id": a.ids["dataset"]}, **SPEC},
    ):
        with pytest.raises(TrainyardError) as err:
            b.client.create_job(spec)
        assert err.value.status == 404 and err.value.code == "not_found"
        assert a.ids["dataset"] in err.value.message
    assert b.client.request("GET", "/v1/jobs", params={"limit": 100})["data"] == before


@pytest.mark.parametrize("kind", ["datasets", "jobs", "models"])
def test_lists_show_only_the_projects_own_objects(
    projects: tuple[Project, Project], kind: str
) -> None:
    a, b = projects
    key = kind[:-1]
    for me, other in ((a, b), (b, a)):
        listed = {
            o["id"] for o in me.client.request("GET", f"/v1/{kind}", params={"limit": 100})["data"]
        }
        assert me.ids[key] in listed
        assert other.ids[key] not in listed
    done = b.client.request("GET", "/v1/jobs", params={"status": "succeeded", "limit": 100})
    assert a.ids["job"] not in {j["id"] for j in done["data"]}


def test_an_idempotency_key_is_scoped_to_its_project(projects: tuple[Project, Project]) -> None:
    a, b = projects
    key = f"shared-{secrets.token_hex(4)}"
    queued = {**SPEC, "training": {**SPEC["training"], "max_steps": 100_000}}
    first = a.client.create_job({"dataset_id": a.ids["dataset"], **queued}, idempotency_key=key)
    try:
        other = b.client.create_job({"dataset_id": b.ids["dataset"], **queued}, idempotency_key=key)
        try:
            assert other["id"] != first["id"]
            assert other["dataset_id"] == b.ids["dataset"]
        finally:
            b.client.cancel_job(other["id"])
    finally:
        a.client.cancel_job(first["id"])
    for p, job in ((a, first), (b, other)):
        assert p.client.wait_job(job["id"], timeout=60)["status"] == "cancelled"


def attempt_of(db: Engine, job_id: str) -> str:
    with db.connect() as conn:
        return str(
            conn.execute(
                text("SELECT id FROM attempts WHERE job_id = :j ORDER BY number DESC"),
                {"j": job_id},
            ).scalar_one()
        )


def event_count(db: Engine, job_id: str) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM events WHERE job_id = :j"), {"j": job_id}
            ).scalar_one()
        )


def test_internal_endpoints_reject_a_user_key(
    stack: Stack, projects: tuple[Project, Project], db: Engine
) -> None:
    a, _ = projects
    with db.connect() as conn:
        node_id = conn.execute(text("SELECT id FROM nodes LIMIT 1")).scalar_one()
    attempt = attempt_of(db, a.ids["job"])
    node = {
        "name": "intruder",
        "host": "h",
        "queue": "q",
        "accelerator": "cpu",
        "slots": 1,
    }
    calls = [
        ("/internal/nodes", node),
        (f"/internal/nodes/{node_id}/heartbeat", None),
        (f"/internal/attempts/{attempt}/start", {}),
        (f"/internal/attempts/{attempt}/events", {"events": []}),
        (f"/internal/attempts/{attempt}/finish", {"exit_code": 0}),
    ]
    before = event_count(db, a.ids["job"])
    for path, body in calls:
        response = a.call("POST", path, body)
        assert response.status_code in (401, 404), (path, response.text)
        assert response.json()["error"]["code"] in ("unauthorized", "not_found")
    with db.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM nodes WHERE name = 'intruder'")).scalar() == 0
        )
    assert event_count(db, a.ids["job"]) == before
    assert a.client.job(a.ids["job"])["status"] == "succeeded"


def test_an_attempt_token_works_only_for_its_own_attempt(
    stack: Stack, projects: tuple[Project, Project], db: Engine
) -> None:
    a, b = projects
    attempts = {p.ids["job"]: attempt_of(db, p.ids["job"]) for p in (a, b)}
    tokens = {job: secrets.token_urlsafe(32) for job in attempts}
    with db.begin() as conn:  # tokens live only in Celery messages: mint known ones
        for job, attempt in attempts.items():
            conn.execute(
                text("UPDATE attempts SET token_hash = :h WHERE id = :a"),
                {"h": hash_secret(tokens[job]), "a": attempt},
            )
    a_token, b_attempt = tokens[a.ids["job"]], attempts[b.ids["job"]]
    batch = {"events": [{"seq": 10_000, "event": {"type": "log", "message": "forged"}}]}
    before = event_count(db, b.ids["job"])

    internal = f"http://127.0.0.1:{stack.env['TRAINYARD_INTERNAL_PORT']}"

    def post(path: str, token: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{internal}/internal/attempts/{b_attempt}/{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    for path, body in (("events", batch), ("finish", {"exit_code": 1}), ("start", {})):
        response = post(path, a_token, body)
        assert_not_found(response, b_attempt)
    assert event_count(db, b.ids["job"]) == before
    assert b.client.job(b.ids["job"])["status"] == "succeeded"
    # The right token is accepted (the attempt is over, so nothing is stored either).
    own = post("events", tokens[b.ids["job"]], {"events": []})
    assert own.status_code == 200, own.text
    assert json.loads(own.text)["cancel"] is True


def test_model_files_are_not_reachable_by_another_path(projects: tuple[Project, Project]) -> None:
    a, b = projects
    for name in ("../config.json", "..%2Fconfig.json", "%2e%2e/config.json"):
        response = b.call("GET", f"/v1/models/{a.ids['model']}/files/{name}")
        assert response.status_code == 404
