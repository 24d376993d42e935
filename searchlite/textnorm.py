"""Text normalisation shared by the text index and its queries: one rule for names, one fold for matching."""

from __future__ import annotations

import re
import unicodedata

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s_\-.,;:+()\[\]{}]+")
_DIGITS_LETTERS = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")


def name_words(name: str) -> str:
    """The words of a file or folder name: ``IMG_4711_birthday.jpg`` -> ``img 4711 birthday jpg``.

    Separators (``_ - .`` and spaces) and camelCase boundaries split words; a letter/digit boundary
    splits too (``DSC04711`` -> ``dsc 04711``) while the whole token is kept, so both "DSC04711" and
    "4711" find the photo.
    """
    words: list[str] = []
    for token in _SEPARATORS.split(name):
        if not token:
            continue
        parts = [p for p in _DIGITS_LETTERS.split(_CAMEL.sub(" ", token).replace(" ", "\0")) if p]
        pieces = [w for p in parts for w in p.split("\0") if w]
        if len(pieces) > 1:
            words.append(token.lower())
        words.extend(w.lower() for w in pieces)
    return " ".join(dict.fromkeys(words))


def fold(text: str) -> str:
    """Case- and accent-insensitive form of ``text`` (``Zürich`` -> ``zurich``, ``ÉCOLE`` -> ``ecole``).

    CJK text is unchanged apart from NFKC width folding (full-width ``ＡＢＣ`` -> ``abc``).
    """
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
