"""The layering of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml must all hold, and no
module grows past ~600 lines without saying why at its top."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed; it is a test extra of pyproject.toml")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_long_modules_say_why():
    """A module over the size limit carries a line starting with 'Size:' in its docstring explaining why."""
    offenders = []
    for package in ("monitor", "workers", "dashboards"):
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > MAX_LINES and "\nSize:" not in text[:3000]:
                offenders.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not offenders, "modules over ~600 lines without a 'Size:' reason at their top: " + ", ".join(offenders)
