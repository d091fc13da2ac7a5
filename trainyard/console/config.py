"""Where the CLI finds the API: TRAINYARD_API_URL / TRAINYARD_API_KEY, else `trainyard login`'s
file (mode 0600) under $XDG_CONFIG_HOME/trainyard (default ~/.config/trainyard)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainyard.client import Client

DEFAULT_URL = "http://127.0.0.1:8000"


def credentials_path() -> Path:
    """The file `trainyard login` writes."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "trainyard" / "credentials.json"


def save(url: str, key: str) -> Path:
    """Store the URL and key, readable by the owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "key": key}, f)
    os.chmod(tmp, 0o600)  # an existing file keeps its old mode through os.open
    tmp.replace(path)
    return path


def load() -> tuple[str, str]:
    """(URL, key): the environment first, then the stored login, then the local default."""
    stored: dict[str, str] = {}
    path = credentials_path()
    if path.exists():
        stored = json.loads(path.read_text())
    url = os.environ.get("TRAINYARD_API_URL") or stored.get("url") or DEFAULT_URL
    key = os.environ.get("TRAINYARD_API_KEY") or stored.get("key") or ""
    return url, key


def client() -> Client:
    """A client for the configured API."""
    url, key = load()
    return Client(url, key, max_retries=3)
