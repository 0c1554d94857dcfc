"""Hypothesis profiles for the fuzz tests: `ci` (the default) is bounded and derandomized, so the whole
folder runs in about a minute on two cores and a run fails the same way every time; `long` explores
(HYPOTHESIS_PROFILE=long). bench/fuzz.py runs the same strategies for many more cases."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
