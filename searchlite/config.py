"""Settings resolved once from the environment (and CLI flags), passed down explicitly."""

from __future__ import annotations

import os
from pathlib import Path

#: Model a new library is indexed with when neither --model nor the library says otherwise: SigLIP 2
#: B/16 (multilingual, COCO text->image R@1 52.1 published vs SigLIP B/16's 47.8, same image tower
#: cost; see the README's model table). Existing libraries keep their own models (by model_id).
DEFAULT_MODEL = os.environ.get("SEARCHLITE_MODEL", "siglip2-base")


def default_library() -> Path:
    """$SEARCHLITE_LIBRARY, else the platform's user data dir (e.g. ~/.local/share/searchlite)."""
    env = os.environ.get("SEARCHLITE_LIBRARY")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("searchlite", appauthor=False))


def cache_dir() -> Path:
    """$SEARCHLITE_CACHE, else the platform's user cache dir: bench libraries and the demo."""
    env = os.environ.get("SEARCHLITE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("searchlite", appauthor=False))
