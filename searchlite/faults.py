"""Crash injection for the durability tests: ``SEARCHLITE_CRASH_AT=<point>[:<nth>]`` makes the
process SIGKILL itself when it reaches that point (the nth time), exactly as ``kill -9`` would.
Without the variable, :func:`crashpoint` is a dictionary lookup and nothing else."""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here if the environment asks for a crash at ``name``."""
    spec = os.environ.get("SEARCHLITE_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
