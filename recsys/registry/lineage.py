"""Lineage shared by everything that registers a model: the code version that produced it."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path


@functools.cache
def code_version() -> str:
    """The git commit of this checkout, else the installed ``recsys`` version (cached: it does
    not change while the process runs)."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return importlib.metadata.version("recsys")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
