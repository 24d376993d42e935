"""Perceptual hashes: a second duplicate channel the embedding model cannot blind.

A 64-bit DCT hash (``imagehash.phash``) is computed at index time from the decode already made for
the model (no second decode) and stored as 16 hex digits in ``images.phash``. Two photos whose
hashes differ in at most :data:`HASH_DISTANCE` bits are the same picture (a resized, re-encoded or
re-saved copy) whatever their embeddings say. :func:`hash_pairs` finds every such pair without an
n x n matrix: split the 64 bits into ``distance + 1`` blocks; two hashes within the distance agree
exactly on at least one block (pigeonhole), so only hashes sharing a block value are compared.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from searchlite.errors import QueryError

log = logging.getLogger(__name__)

#: Bits two hashes may differ in and still be one picture. A half-size quality-70 re-encode of the
#: demo photos differs by 0-2 bits; different photos by 24 or more.
HASH_DISTANCE = 6
#: Largest distance accepted (beyond it different photos start to match).
MAX_DISTANCE = 16
_CHUNK = 2048


def phash_of(image: Any) -> str | None:
    """The 64-bit perceptual hash of a decoded PIL image as 16 hex digits (None if it fails)."""
    import imagehash

    try:
        return str(imagehash.phash(image))
    except Exception as exc:  # noqa: BLE001 - the hash is an extra channel; never fail the decode
        log.debug("no perceptual hash: %s", exc)
        return None


def to_bits(hexes: list[str]) -> np.ndarray:
    """16-hex-digit hashes as uint64."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    as_bytes = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def check_distance(distance: int) -> int:
    if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= MAX_DISTANCE:
        raise QueryError(f"hash distance must be an integer from 0 to {MAX_DISTANCE}, got {distance!r}")
    return distance


def hash_pairs(hashes: np.ndarray, distance: int = HASH_DISTANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of positions in ``hashes`` (uint64) within ``distance`` bits, as (i, j,
    bits differing) arrays."""
    distance = check_distance(distance)
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    bounds = np.linspace(0, 64, distance + 2).astype(int)
    found_i, found_j, found_d = [], [], []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        key = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if len(sk) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(sk)].astype(np.int64)
        for s, e in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            run = order[s:e]
            for c in range(0, len(run), _CHUNK):
                part = run[c:c + _CHUNK]
                bits = popcount(h[part][:, None] ^ h[run][None, :])
                ii, jj = np.nonzero(bits <= distance)
                a, b = part[ii], run[jj]
                keep = a < b
                found_i.append(a[keep])
                found_j.append(b[keep])
                found_d.append(bits[ii[keep], jj[keep]].astype(np.int64))
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    _, first = np.unique(i * (len(h) + 1) + j, return_index=True)
    return i[first], j[first], d[first]


__all__ = ["HASH_DISTANCE", "MAX_DISTANCE", "check_distance", "hash_pairs", "phash_of", "popcount", "to_bits"]
