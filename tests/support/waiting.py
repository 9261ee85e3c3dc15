from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def eventually(fetch: Callable[[], Awaitable[T]], check: Callable[[T], object], timeout: float = 10.0,
                     interval: float = 0.1, what: str = "condition") -> T:
    """Fetch (an API call) until ``check`` holds of the result, and return it: for what other
    processes read from the live state, which follows the messages by about a second."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}"[:2000])
        await asyncio.sleep(interval)
