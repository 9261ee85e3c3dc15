"""Sign-in attempts per client address and per username. Each attempt costs a scrypt hash
(about 0.1-0.2 s of CPU): without a limit, a few clients could keep the service's CPUs busy,
or guess passwords as fast as it can hash. An attempt over the limit is refused before any
hashing."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from fleet_service.errors import TooManyRequests


class LoginThrottle:
    """Per process, in memory: a restart forgets the counts, which costs an attacker at most
    one more minute's worth."""

    def __init__(self, per_address_per_minute: int, per_user_per_minute: int) -> None:
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._per_address = RateLimitItemPerMinute(per_address_per_minute)
        self._per_user = RateLimitItemPerMinute(per_user_per_minute)

    def attempt(self, address: str, username: str) -> None:
        """Count one attempt, or raise TooManyRequests if the address or the username has
        used up its attempts for the last minute. A refused attempt is not counted."""
        if not self._window.hit(self._per_address, "login-address", address):
            raise self._refused(self._per_address, "login-address", address)
        # Usernames are not checked for existence here: the limit must not tell which exist.
        if not self._window.hit(self._per_user, "login-user", username[:200]):
            raise self._refused(self._per_user, "login-user", username[:200])

    def _refused(self, item: RateLimitItem, *key: str) -> TooManyRequests:
        reset_at, _ = self._window.get_window_stats(item, *key)
        seconds = max(1, math.ceil(reset_at - time.time()))
        return TooManyRequests(
            f"Quá nhiều lần đăng nhập; hãy thử lại sau {seconds} giây",
            f"Too many sign-in attempts; try again in {seconds} seconds",
            retry_after_s=seconds,
        )


def get_login_throttle(request: Request) -> LoginThrottle:
    return request.app.state.login_throttle


LoginThrottleDep = Annotated[LoginThrottle, Depends(get_login_throttle)]
