"""The library's wheel, built from a clean copy of the source tree.

`pip wheel .` builds in the source folder, and setuptools reuses a `build/lib` left there by an
earlier build: a stale one (a file since deleted or moved out of the package) would end up in the
wheel. The copy holds only the project's own files, so the wheel is what a fresh clone builds.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__",
                                   ".mypy_cache", ".ruff_cache", ".pytest_cache", ".saga-data", ".demo-data")


def build_wheel(dest: Path) -> Path:
    """Build the wheel into `dest` (from a copy of the tree beside it); its path."""
    source = dest / "source"
    shutil.copytree(ROOT, source, ignore=_LEFT_OUT)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(source)],
                   check=True, capture_output=True, timeout=180)
    [wheel] = dest.glob("celery_sagas-*.whl")
    return wheel
