"""The text channel of a search: a user's query turned into safe FTS5 queries over ``image_text``.

Rules (docs/hybrid-search.md):

- Terms are split as combined queries are (``"Paris + sunset"``: two terms; ``- term`` is ignored here).
- A term in double quotes (``"INVOICE 4711"``) is an exact phrase: its words in that order, nothing between
  (a prefix only with an explicit ``*`` after the last word).
- Otherwise every word of a term must be in the same field of a photo, as a *whole word* (case and
  accents folded): "car" never matches "card" or "cards". No fuzzy matching.
- Prefixes: a word ending in ``*`` (``wedd*``) is a prefix in every field; a name-like word (it holds a
  digit or an underscore: ``img_47``, ``DSC0471``) is also a prefix in the ``name`` and ``folder`` fields
  (file names are typed partially), and a whole word elsewhere.
- A term with Chinese, Japanese or Korean characters matches as a substring through the trigram index
  (``東京駅`` inside ``東京駅南口``); chunks shorter than three characters fall back to ``LIKE``.

Every word is quoted in the FTS expression (``"w"``), so no input can reach FTS5's query syntax
(``AND``, ``NEAR``, column filters, ``^``). Ranking: FTS5 bm25 within a field, times the field's weight.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text as sql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from searchlite.textindex import FIELDS
from searchlite.textnorm import fold

#: how much a match in each field says that the photo is what the user means (calibrated evidence, 0..1):
#: text the user wrote themselves (keywords, title) or read off the photo (OCR) and its place are strong;
#: names, folders and long descriptions weaker (they hold many incidental words)
FIELD_EVIDENCE: dict[str, float] = {"keywords": 0.95, "title": 0.9, "ocr": 0.9, "place": 0.9, "camera": 0.9,
                                    "name": 0.8, "description": 0.7, "folder": 0.6}
#: a prefix (not whole-word) match counts for this share of the field's evidence
PREFIX_FACTOR = 0.7
#: fields where a name-like word matches as a prefix
NAME_FIELDS = ("name", "folder")
SNIPPET = 80  # characters of context shown per match

_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^(-?\d+(?:\.\d+)?):(?=[^\W\d_]|[\"'])(.+)$")
_QUOTED = re.compile(r"^\"(.*)\"$", re.S)
_WORD = re.compile(r"[^\W_]+\*?|\*", re.UNICODE)
_CJK = re.compile(r"[\u2e80-\u2fff\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf"
                  r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]")


@dataclass
class Term:
    """One positive term of a query, ready for the text index."""

    raw: str
    phrase: bool  # written in double quotes
    words: list[str] = field(default_factory=list)  # folded words ("*" kept on explicit prefixes)
    cjk: bool = False


@dataclass
class TextHit:
    """One photo the text channel found: its evidence (0..1), bm25-based score and why it matched."""

    image_id: int
    evidence: float = 0.0
    score: float = 0.0
    exact: bool = False  # every term matched whole words (or an exact substring) in some field
    matches: list[dict] = field(default_factory=list)  # [{"field": ..., "text": snippet}]


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def _image_term(raw: str, base: str | Path | None) -> bool:
    """Whether a term names an image file (an image term of a combined query: not text to look for)."""
    from searchlite.imaging import IMAGE_EXTENSIONS

    path = Path(raw).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def parse_terms(query: str, base: str | Path | None = None, files: bool = False) -> list[Term]:
    """The positive terms of a (possibly combined) query, quoted phrases marked; with ``files``, terms
    naming an image file (resolved against ``base``) are left out, as the embedding uses them."""
    parts = _SPLIT.split(f" {query.strip()} ".strip())
    signs = ["+"] + parts[1::2]
    terms = []
    for sign, raw in zip(signs, parts[0::2]):
        raw = raw.strip()
        if sign == "-" or not raw:
            continue
        m = _WEIGHT.match(raw)
        if m:
            if float(m.group(1)) <= 0:
                continue
            raw = m.group(2).strip()
        quoted = _QUOTED.match(raw)
        if files and not quoted and _image_term(raw, base):
            continue
        body = quoted.group(1).strip() if quoted else raw
        if not body:
            continue
        if has_cjk(body):
            # NFKC only: NFKD (fold) would split Hangul syllables into jamo and kana from their voicing marks
            terms.append(Term(body, bool(quoted), [unicodedata.normalize("NFKC", c).casefold() for c in body.split()],
                              cjk=True))
            continue
        words = [w for w in _WORD.findall(fold(body)) if w != "*"]
        if words:
            terms.append(Term(body, bool(quoted), words))
    return terms


def _quote(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def _name_like(word: str) -> bool:
    return any(c.isdigit() for c in word)


def fts_expression(term: Term, names: bool) -> tuple[str, bool]:
    """The FTS5 words-table expression of a term and whether it uses a prefix; ``names``: for the
    name/folder fields, where name-like words are prefixes. Every word is quoted."""
    if term.phrase:  # quoted: exact everywhere, a prefix only where the user wrote the star
        star = term.words[-1].endswith("*")
        return _quote(" ".join(w.rstrip("*") for w in term.words)) + (" *" if star else ""), star
    parts, prefix = [], False
    for raw_word, word in zip(_raw_words(term.raw), term.words):
        star = word.endswith("*") or (names and ("_" in raw_word or _name_like(raw_word)) and word == _last(raw_word))
        parts.append(_quote(word.rstrip("*")) + (" *" if star else ""))
        prefix |= star
    return " ".join(parts), prefix


def _raw_words(raw: str) -> list[str]:
    """The words of a term as typed, aligned with :func:`parse_terms`' words (a name-like token
    ``img_47`` gives ``img`` and ``47``, both marked by the token they come from)."""
    out = []
    for token in raw.split():
        for w in _WORD.findall(fold(token)):
            if w != "*":
                out.append(token)
    return out


def _last(token: str) -> str:
    words = [w for w in _WORD.findall(fold(token)) if w != "*"]
    return words[-1] if words else ""


def _conn(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def _words_rows(conn: Connection, expr: str, fields: tuple[str, ...], limit: int) -> list[tuple]:
    marks = ",".join(f"'{f}'" for f in fields)  # from FIELDS only: safe to inline
    return list(conn.execute(sql(
        "SELECT t.image_id, t.field, t.text, bm25(image_text_words) FROM image_text_words "
        "JOIN image_text t ON t.id = image_text_words.rowid "
        f"WHERE image_text_words MATCH :q AND t.field IN ({marks}) ORDER BY bm25(image_text_words) LIMIT :n"),
        {"q": expr, "n": limit}))


def _cjk_rows(conn: Connection, term: Term, limit: int) -> list[tuple]:
    chunks = [c for c in term.words if c]
    if all(len(c) >= 3 for c in chunks):
        expr = " AND ".join(_quote(c) for c in chunks)
        return list(conn.execute(sql(
            "SELECT t.image_id, t.field, t.text, bm25(image_text_grams) FROM image_text_grams "
            "JOIN image_text t ON t.id = image_text_grams.rowid "
            "WHERE image_text_grams MATCH :q ORDER BY bm25(image_text_grams) LIMIT :n"), {"q": expr, "n": limit}))
    # trigrams need three characters: a short chunk is a plain substring scan (LIKE, escaped)
    where = " AND ".join(f"t.text LIKE :c{i} ESCAPE '\\'" for i in range(len(chunks)))
    params = {f"c{i}": "%" + re.sub(r"([%_\\])", r"\\\1", c) + "%" for i, c in enumerate(chunks)}
    return list(conn.execute(sql(f"SELECT t.image_id, t.field, t.text, -1.0 FROM image_text t WHERE {where} "
                                 "ORDER BY t.id LIMIT :n"), {**params, "n": limit}))


def snippet(text: str, words: list[str], width: int = SNIPPET) -> str:
    """The part of ``text`` around the first of ``words`` found in it (case and accents folded)."""
    if len(text) <= width:
        return text
    folded = fold(text)
    at = min((i for i in (folded.find(w.rstrip("*")) for w in words if w.rstrip("*")) if i >= 0), default=0)
    at = min(at, len(folded) - 1) if len(folded) == len(text) else 0  # folding changed lengths: no offset
    lo = max(0, at - width // 3)
    hi = min(len(text), lo + width)
    return ("…" if lo else "") + text[lo:hi].strip() + ("…" if hi < len(text) else "")


def term_rows(conn: Connection, term: Term, limit: int) -> list[tuple[int, str, str, float, bool]]:
    """(image_id, field, text, bm25, prefix) rows matching one term, best first per query."""
    if term.cjk:
        return [(i, f, t, s, False) for i, f, t, s in _cjk_rows(conn, term, limit)]
    other = tuple(f for f in FIELDS if f not in NAME_FIELDS)
    expr, prefix = fts_expression(term, names=False)
    rows = [(i, f, t, s, prefix) for i, f, t, s in _words_rows(conn, expr, other, limit)]
    name_expr, name_prefix = fts_expression(term, names=True)
    rows += [(i, f, t, s, name_prefix) for i, f, t, s in _words_rows(conn, name_expr, NAME_FIELDS, limit)]
    return rows


def search_text(db: Session | Connection, query: str, limit: int = 200, base: str | Path | None = None,
                files: bool = False) -> dict[int, TextHit]:
    """The photos whose text matches some positive term of the query; a photo matching several terms
    gathers their evidence (``"Paris + sunset"``: the place row of Paris photos is text evidence, "sunset"
    is left to the embedding). Returns ``{image_id: TextHit}``."""
    conn = _conn(db)
    terms = parse_terms(query, base, files)
    per_term: list[dict[int, TextHit]] = []
    for term in terms:
        found: dict[int, TextHit] = {}
        for image_id, fld, text, bm25, prefix in term_rows(conn, term, limit):
            evidence = FIELD_EVIDENCE.get(fld, 0.5) * (PREFIX_FACTOR if prefix else 1.0)
            hit = found.setdefault(image_id, TextHit(image_id))
            if evidence > hit.evidence:
                hit.evidence, hit.exact = evidence, not prefix
            hit.score = max(hit.score, -float(bm25) * FIELD_EVIDENCE.get(fld, 0.5))
            if not any(m["field"] == fld for m in hit.matches):
                hit.matches.append({"field": fld, "text": snippet(text, term.words)})
        if found:
            per_term.append(found)
    if not per_term:
        return {}
    # photos matching several terms: evidence combines as independent signals (noisy-OR)
    merged: dict[int, TextHit] = {}
    for found in per_term:
        for image_id, hit in found.items():
            into = merged.get(image_id)
            if into is None:
                merged[image_id] = hit
                continue
            into.evidence = 1 - (1 - into.evidence) * (1 - hit.evidence)
            into.score += hit.score
            into.exact = into.exact or hit.exact
            into.matches += [m for m in hit.matches if m not in into.matches]
    order = {f: i for i, f in enumerate(FIELDS)}
    for hit in merged.values():
        hit.matches.sort(key=lambda m: order.get(m["field"], len(order)))
    return merged
