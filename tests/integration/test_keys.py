"""API keys: roles, expiry, listing and revocation, from the CLI and over the API."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


def http(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"})


def cli_fails(stack: Stack, *args: str) -> str:
    """Run a `trainyard` command that must fail; its standard error."""
    out = subprocess.run(
        [sys.executable, "-m", "trainyard.cli", *args],
        env=stack.env,
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    out = stack.cli("keys", "create", "--project", "keys-admin", "--role", "admin")
    assert "admin API key" in out
    return out.strip().splitlines()[-1]


def test_cli_lists_keys_with_role_and_expiry_and_never_the_secret(stack: Stack) -> None:
    member = stack.cli("keys", "create", "--project", "keys-cli", "--expires-in", "90d")
    assert ", expiring 20" in member
    key = member.strip().splitlines()[-1]
    stack.cli("keys", "create", "--project", "keys-cli", "--role", "admin")
    listing = stack.cli("keys", "list", "--project", "keys-cli")
    lines = listing.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("ID")
    assert key[:10] in lines[1] and "member" in lines[1] and "expires" in lines[1]
    assert "admin" in lines[2] and "live" in lines[2]
    assert key not in listing


def test_cli_refusals_are_one_clear_line(stack: Stack) -> None:
    assert "api key ty_nosuchkey not found" in cli_fails(
        stack, "keys", "revoke", "--key", "ty_nosuchkey"
    )
    assert "is not a duration" in cli_fails(
        stack, "keys", "create", "--project", "p", "--expires-in", "soon"
    )
    assert "must be positive" in cli_fails(
        stack, "keys", "create", "--project", "p", "--expires-in", "0s"
    )


def test_an_expired_key_stops_working(stack: Stack) -> None:
    key = stack.cli("keys", "create", "--project", "keys-expiry", "--expires-in", "3s")
    client = http(stack, key.strip().splitlines()[-1])
    assert client.get("/v1/datasets").status_code == 200  # and now remembered by the API
    time.sleep(3.2)
    r = client.get("/v1/datasets")
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_admin_keys_manage_keys_over_the_api(stack: Stack, admin_key: str) -> None:
    admin = http(stack, admin_key)
    r = admin.post(
        "/v1/keys", json={"project": "keys-api", "role": "member", "expires_in_seconds": 3600}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["role"] == "member" and created["expires_at"] and created["key"]
    member = http(stack, created["key"])
    assert member.get("/v1/jobs").status_code == 200
    listed = admin.get("/v1/keys", params={"project": "keys-api"}).json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and listed[0]["prefix"] == created["key"][:10]
    # A member key manages no keys, nor sees the platform's metrics.
    assert member.get("/v1/keys").status_code == 403
    assert member.post("/v1/keys", json={"project": "keys-api"}).status_code == 403
    assert member.delete(f"/v1/keys/{created['id']}").status_code == 403
    r = admin.delete(f"/v1/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert member.get("/v1/jobs").status_code == 401
    assert admin.delete(f"/v1/keys/{created['id']}").status_code == 200  # idempotent
    assert admin.delete("/v1/keys/key_nosuchkey").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"project": "bad\x00name"}, "project"),
        ({"project": ""}, "project"),
        ({"project": "p", "role": "owner"}, "role"),
        ({"project": "p", "expires_in_seconds": 0}, "expires_in_seconds"),
        ({"project": "p", "scopes": ["all"]}, "scopes"),
    ],
)
def test_a_bad_key_request_is_422_naming_the_field(
    stack: Stack, admin_key: str, body: dict[str, object], field: str
) -> None:
    r = http(stack, admin_key).post("/v1/keys", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(f"{field}:")


def test_metrics_need_an_admin_key(stack: Stack, admin_key: str) -> None:
    assert httpx.get(f"{stack.url}/metrics").status_code == 401
    member = stack.new_key("keys-metrics")
    assert http(stack, member).get("/metrics").status_code == 403
    r = http(stack, admin_key).get("/metrics")
    assert r.status_code == 200 and "trainyard_jobs" in r.text
