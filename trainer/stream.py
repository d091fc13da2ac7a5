"""A place in a stream of epochs that every data-parallel rank walks in lockstep.

The pretraining windows (trainer.data) and the SFT and DPO rows (trainer.sft_data) are
both read this way: a micro-batch call consumes world_size x micro_batch_size items of the
stream and this rank takes its own slice. The position (epoch, cursor) is the whole
sampler state, the same on every rank, so a resume is exact for any world size.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Generic, TypeVar

from trainer.task import StaleSamplerState

E = TypeVar("E", bound=Sized)  # one epoch's items: anything with a length


class EpochStream(Generic[E]):
    """The stream position; a subclass makes each epoch's items in order."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.cursor = 0  # next unread item of self.epoch
        self._made: dict[int, E] = {}

    def make_epoch(self, number: int) -> E:
        """Epoch `number`'s items in order (at least one), the same on every call."""
        raise NotImplementedError

    def epoch_items(self, number: int) -> E:
        """Epoch `number`'s items; the latest two epochs asked for are kept, so a
        micro-batch that straddles two epochs makes each once."""
        if number not in self._made:
            self._made = {k: v for k, v in self._made.items() if k >= number - 1}
            self._made[number] = self.make_epoch(number)
        return self._made[number]

    def epoch_length(self, number: int) -> int:
        """How many items epoch `number` holds."""
        return len(self.epoch_items(number))

    def take_mine(self, micro_batch_size: int) -> list[tuple[int, int]]:
        """(epoch, index) of this rank's slice of the next world_size x micro_batch_size
        items; the position moves past all of them."""
        self.skip(self.rank * micro_batch_size)
        mine = []
        for _ in range(micro_batch_size):
            mine.append((self.epoch, self.cursor))
            self.skip(1)
        self.skip((self.world_size - self.rank - 1) * micro_batch_size)
        return mine

    def skip(self, n: int) -> None:
        """Move the position n items on, across epochs as needed."""
        while n > 0:
            left = self.epoch_length(self.epoch) - self.cursor
            if n < left:
                self.cursor += n
                return
            n -= left
            self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The position, identical on every rank, for checkpoints."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a position saved by state_dict."""
        if "epoch" not in state:  # e.g. the generator state of a random-window sampler
            raise StaleSamplerState("no stream position in the sampler state")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def restart_at(self, step: int, batch_size: int) -> None:
        """Place a rank that has no usable saved state (the world size grew, or the
        checkpoint predates this sampler): every step reads batch_size items of the one
        stream, so the step gives the place."""
        self.epoch, self.cursor = 0, 0
        self.skip(step * batch_size)
