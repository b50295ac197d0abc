"""The Prometheus alert rules in deploy/prometheus are valid and pass their unit tests.

Runs ``promtool check rules`` on alerts.yml and ``promtool test rules`` on
alerts_test.yml, whose cases say what each alert must and must not fire on.
promtool is looked for in the venv's bin (``make test`` puts it there, from
Debian's ``prometheus`` package) and then on PATH. Without it the test skips,
except under ``CI=true``, where a missing promtool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def _promtool() -> str:
    """The path of promtool, or a skip (a failure under CI=true) when there is none."""
    # The running venv's bin first (make test fetches promtool there), then ./.venv's.
    candidates = list(
        dict.fromkeys([Path(sys.executable).parent / "promtool", ROOT / ".venv/bin/promtool"])
    )
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("promtool")
    if found:
        return found
    reason = (
        "promtool NOT FOUND (looked in "
        + ", ".join(str(c.parent) for c in candidates)
        + " and on PATH): the Prometheus alert rules in deploy/prometheus were NOT checked. "
        "Run `make .venv/bin/promtool` (or `make test`) to fetch it."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(*args: str) -> None:
    result = subprocess.run(
        [_promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"$ promtool {' '.join(args)}  (exit {result.returncode})\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


def test_alert_rules_are_valid() -> None:
    _run("check", "rules", str(RULES.relative_to(ROOT)))


def test_alert_rules_pass_their_unit_tests() -> None:
    _run("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
