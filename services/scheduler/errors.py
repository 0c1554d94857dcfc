"""The scheduler's errors and dead-letter reasons, worded once for both backends."""

from __future__ import annotations

from mint.errors import Code, MintError, not_found


def no_engine(base_model: str, exclude: frozenset[str]) -> MintError:
    excluded = f" (excluding {', '.join(sorted(exclude))})" if exclude else ""
    return MintError(Code.UNAVAILABLE, f"no live engine serves base model {base_model!r}{excluded}")


def no_wave(wave_id: str, ttl_s: float) -> MintError:
    return not_found(f"no wave {wave_id!r}: unknown, or expired (waves are kept {ttl_s:.0f} s)")


def not_registered(engine_id: str) -> MintError:
    return not_found(f"engine {engine_id!r} is not registered; loads are queued only for registered engines")


def orphaned(engine_id: str, base_model: str) -> str:
    """Why a load was dead-lettered without being tried: its engine left and none could take it over."""
    return f"engine {engine_id} left and no live engine serves base model {base_model!r}"
