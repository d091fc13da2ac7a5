"""Webhook receivers on private, loopback and link-local addresses are refused."""

from __future__ import annotations

import pytest

from domain.webhooks import new_secret, private_address


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "0.0.0.0"]
)
def test_non_public_addresses_are_named(host: str) -> None:
    assert private_address(host, 80) is not None


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(host: str) -> None:
    assert private_address(host, 443) is None


def test_secrets_are_standard_webhooks_secrets() -> None:
    from standardwebhooks.webhooks import Webhook

    secret = new_secret()
    assert secret.startswith("whsec_") and secret != new_secret()
    Webhook(secret)  # parses as a Standard Webhooks key
