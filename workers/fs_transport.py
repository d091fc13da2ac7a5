"""The embedded broker: kombu's file-system transport with atomic message writes.

kombu writes a message file in place, so a worker polling the folder can open it while it
is still empty. Here each message is written beside the folder and renamed in, whole.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path
from time import monotonic_ns
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

_sequence = itertools.count()


class Channel(filesystem.Channel):
    """A channel whose messages appear in the queue folder complete or not at all."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # kombu reads a queue in name order; fixed-width nanoseconds and a per-process
        # sequence keep messages sent within one millisecond in the order they were sent.
        name = f"{monotonic_ns():020d}_{next(_sequence):012d}_{uuid.uuid4()}.{queue}.msg"
        staging = Path(self.data_folder_out).parent / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / name
        with tmp.open("wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(tmp, Path(self.data_folder_out) / name)


class Transport(filesystem.Transport):
    """kombu's file-system transport with the atomic channel."""

    Channel = Channel
