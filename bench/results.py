"""Result rows: printed as a table as they come, and kept in a JSON file per run."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.options import PROJECT_DIR, Options


@dataclass(frozen=True)
class Row:
    scenario: str  # a, b, c, d, or a ratio such as "a/b"
    variant: str
    value: float
    unit: str
    target: str = ""
    verdict: str = ""  # "met", "MISSED" or ""
    detail: dict[str, Any] = field(default_factory=dict)


_HEADER = f"{'':<4}{'variant':<38}{'value':>12}  {'unit':<16}{'target':<16}verdict"


def format_row(row: Row) -> str:
    if row.unit == "x":  # a ratio such as two workers / one
        value = f"{row.value:,.2f}"
    else:
        value = f"{row.value:,.1f}" if row.unit == "%" else f"{row.value:,.0f}"
    head = f"{row.scenario:<4}{row.variant:<38}{value:>12}"
    return f"{head}  {row.unit:<16}{row.target:<16}{row.verdict}"


def redacted(value: str) -> str:
    """An option's value without the password a URL may hold (``--postgres-url``)."""
    return re.sub(r"^([a-z+]+://[^:/@]*:)[^@]*@", r"\1***@", value)


def _first(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _first(r"^model name\s*:\s*(.+)$", cpuinfo),
        "memory": _first(r"^MemTotal:\s*(.+)$", Path("/proc/meminfo").read_text()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nginx": _version(["/usr/sbin/nginx", "-v"]),
        "wrk": _version(["wrk", "--version"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "tidings_commit": _version(["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"]),
        "tidings_src_changes": _src_changes(),
    }


def _src_changes() -> list[str]:
    """Uncommitted changes under src/ (the benchmark measures the working tree)."""
    command = ["git", "--no-optional-locks", "-C", str(PROJECT_DIR), "status", "--porcelain"]
    try:
        done = subprocess.run(
            [*command, "--", "src"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ["git not available"]
    return done.stdout.splitlines()


class Results:
    """Prints rows and rewrites ``<results_dir>/<run id>.json`` after each one."""

    def __init__(self, options: Options) -> None:
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        options.results_dir.mkdir(parents=True, exist_ok=True)
        self.path = options.results_dir / f"{self.run_id}.json"
        self.rows: list[Row] = []
        self._doc: dict[str, Any] = {
            "run_id": self.run_id,
            "machine": machine(),
            "options": {k: redacted(str(v)) for k, v in asdict(options).items()},
            "rows": [],
        }
        self._save()
        print(f"results: {self.path}")
        print("machine: " + json.dumps(self._doc["machine"]))
        print(_HEADER)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self._doc["rows"].append(asdict(row))
        self._save()
        print(format_row(row), flush=True)

    def note(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._doc, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
