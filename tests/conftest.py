"""Project-wide test settings.

In CI (``VITACCEL_REQUIRE_SIMULATORS=1``, set by ``.ci/run``) a test skipped because a
simulator is missing fails instead: a green CI must mean every simulator really ran.
"""

import os

import pytest

_SIMULATOR_WORDS = ("verilator", "icarus", "iverilog", "simulator")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("VITACCEL_REQUIRE_SIMULATORS") == "1"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(word in reason.lower() for word in _SIMULATOR_WORDS):
        report.outcome = "failed"
        report.longrepr = f"simulator required in CI but missing: {reason}"


# CI explores the same property-test examples on every run, so a red CI is reproducible
# and never a roll of the dice; developers' runs keep exploring new examples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") or os.environ.get("VITACCEL_REQUIRE_SIMULATORS") == "1":
    _hypothesis_settings.load_profile("ci")
