"""Schemathesis against `/openapi.json` on the real stack: no request it generates gets a
server error, and no answer contradicts the schema. Path ids are real ones (a dataset and
a job of the caller's project) so that cases get past the 404s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.conftest import corpus
from tests.stack import Stack
from trainyard.client import Client

pytestmark = pytest.mark.integration

EXAMPLES = 8  # per operation: bounds the run to well under a minute


@pytest.fixture(scope="module")
def seeded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A key, and real ids of its project: a dataset and a job."""
    key = stack.new_key("schema")
    client = Client(stack.url, key)
    path = tmp_path_factory.mktemp("schema") / "corpus.txt"
    path.write_text(corpus(lines=300))
    ds = client.wait_dataset(client.upload_dataset(Path(path))["id"], timeout=120)
    job = client.create_job(
        {"dataset_id": ds["id"], "training": {"max_steps": 2}, "resources": {"accelerator": "cpu"}}
    )
    client.cancel_job(job["id"])
    return {"key": key, "dataset_id": ds["id"], "job_id": job["id"]}


def test_no_server_errors_and_no_answer_off_the_schema(
    stack: Stack, seeded: dict[str, Any]
) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    headers = {"Authorization": f"Bearer {seeded['key']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            for name in ("dataset_id", "job_id"):
                if name in (case.path_parameters or {}):
                    case.path_parameters[name] = seeded[name]
            case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=60,
            )

        check()
