"""The scheduler's tuning, shared by both backends so that a fleet and the embedded process behave alike."""

from __future__ import annotations

import dataclasses

from mint.errors import invalid


@dataclasses.dataclass(kw_only=True, slots=True)
class SchedulerConfig:
    heartbeat_s: float = 1.0
    load_factor: float = 1.25       # c in bounded-load hashing: no engine above c * (average load + 1)
    assignment_ttl_s: float = 5.0   # how long a first placement steers requests before the engine reports it
    hot_rps: float = 20.0           # requests/s, averaged over hot_window_s, that make an adapter hot
    hot_window_s: int = 10
    max_attempts: int = 3           # tries of a load (on other engines where possible) before dead letter
    failure_ttl_s: float = 600.0    # how long `load_failure` remembers why an adapter could not be loaded
    wave_ttl_s: float = 86_400.0    # a wave's status (and its claim on engines' bytes) lasts this long
    dead_after_s: float = dataclasses.field(init=False)  # engines not seen for this long are reaped

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0:
            raise invalid(f"heartbeat_s must be positive, got {self.heartbeat_s}")
        if self.load_factor <= 1.0:
            raise invalid(f"load_factor must be greater than 1 (about 1.25), got {self.load_factor}")
        if self.max_attempts < 1:
            raise invalid(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.hot_window_s < 1:
            raise invalid(f"hot_window_s must be at least 1 second, got {self.hot_window_s}")
        self.dead_after_s = 3 * self.heartbeat_s

    @property
    def hot_requests(self) -> float:
        """Requests within the window above which an adapter is hot."""
        return self.hot_rps * self.hot_window_s
