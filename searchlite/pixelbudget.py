"""A budget of pixels being decoded at once, shared by every decode thread of the process.

Decode threads are many (one per core) and most photos are small, so the thread count does not
bound memory; the pixels do. A decode holds the pixels it will materialise (after any reduced-size
decode); one that would exceed the budget waits until others finish. A single decode larger than
the whole budget runs alone rather than never.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: 128 MP: about 400 MB of 8-bit RGB in flight at once, whatever the thread count.
DECODE_PIXELS = 128_000_000


class PixelBudget:
    """A counting semaphore over pixels (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0  # the most pixels held at once (tests and benchmarks read it)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` for the duration of the block, waiting while they would not fit."""
        pixels = max(0, int(pixels))
        with self._cond:
            while self.in_use and self.in_use + pixels > self.capacity:
                self._cond.wait()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_PIXELS)
