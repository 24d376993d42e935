"""Scratch folders for the benchmarks: removed when the benchmark exits (normally, on an error, on Ctrl-C).

A 10M-image run writes tens of GB; leaving it in /tmp after every run fills a disk quickly.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str = "searchlite-bench-") -> Path:
    """A new temporary folder that is deleted when this process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
