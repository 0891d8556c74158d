"""Delimiter tags that wrap data in a prompt (`<candidate_answer>...</candidate_answer>`):
find them in a template, neutralise every look-alike of them inside inserted values, and
locate tagged regions in a model's reply.

Why this is more than a regex over `</name>`: a model reads `</Candidate_Answer foo>`,
`＜/candidate_answer＞` (full-width), `</candidate\u200b_answer>` (zero-width space) or
`</candidate answer>` as the same closing tag, so a value containing any of them could end
its data block early and write text that reads as the judge's instructions. Matching is
therefore done on a normalised view of the text (Unicode compatibility decomposition, so
full-width letters read as ASCII; format characters (category Cf: zero-width spaces, joiners,
bidi marks, soft hyphens) and combining accents removed; case folded; a few bracket
look-alikes mapped to `<` `>`), and in each hit of the ORIGINAL text the brackets are escaped
(`&lt;/candidate_answer foo&gt;`), so it stays visible but cannot open or close a tag. Other
`<...>` (generics, HTML, comparisons) is left alone.
"""
from __future__ import annotations

import re
import unicodedata
from string import Template
from typing import Iterable

# Bracket look-alikes that NFKC does not map to ASCII `<` / `>` (it does map the
# full-width and small forms ＜ ﹤ ＞ ﹥ itself).
_LOOKALIKES = str.maketrans({
    "\u2039": "<", "\u203a": ">",  # ‹ ›
    "\u2329": "<", "\u232a": ">",  # 〈 〉 (angle brackets)
    "\u3008": "<", "\u3009": ">",  # 〈 〉 (CJK)
    "\u27e8": "<", "\u27e9": ">",  # ⟨ ⟩
    "\u02c2": "<", "\u02c3": ">",  # ˂ ˃
})

_INVISIBLE = {"Cf", "Mn", "Me"}  # format characters, combining marks
_TEMPLATE_TAG = re.compile(r"<\s*/?\s*([A-Za-z_][\w-]*)\s*>")
_NAME_SEPARATORS = re.compile(r"[\s_\-]+")


def _canonical_name(name: str) -> str:
    """`Candidate-Answer`, `candidate answer` and `candidate_answer` are one tag to a model."""
    return _NAME_SEPARATORS.sub("", normalize(name))


def normalize_with_map(text: str) -> tuple[str, list[int]]:
    """The normalised view of `text` and, for each of its characters, the index of the
    original character it came from (so hits found in the view can be replaced in `text`).

    Per-character NFKD is enough here: every character that can spell a tag (letters, `<`,
    `/`, `>`, spaces, `_`, `-`) normalises on its own."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        for n in unicodedata.normalize("NFKD", ch).translate(_LOOKALIKES).casefold():
            if unicodedata.category(n) not in _INVISIBLE:
                out.append(n)
                origin.append(i)
    return "".join(out), origin


def normalize(text: str) -> str:
    """NFKD without format characters or combining marks, look-alikes mapped, case folded."""
    return normalize_with_map(text)[0]


def delimiter_tags(template: str) -> set[str]:
    """Tag names the template uses to wrap data, e.g. {'candidate_answer', 'instruction'}."""
    return {t.lower() for t in _TEMPLATE_TAG.findall(template)}


def _tag_pattern(tags: Iterable[str]) -> re.Pattern | None:
    """An opening or closing tag of any of `tags` in the normalised view: spaces anywhere,
    separators inside the name optional, attributes allowed, the closing `>` optional (a
    model still reads `</candidate_answer` at a line end as a closing tag)."""
    names = sorted({_canonical_name(t) for t in tags if _canonical_name(t)}, key=len, reverse=True)
    if not names:
        return None
    spelled = "|".join("[\\s_\\-]*".join(re.escape(c) for c in name) for name in names)
    return re.compile(rf"<\s*(/?)\s*(?:{spelled})(?![\w])[^<>\n]*>?")


def neutralize_tags(text: str, tags: Iterable[str]) -> str:
    """Escape every variant of the given tags inside a value so it cannot open or close a
    data block: the matched text keeps its letters, but its `<`/`>` (and look-alikes) become
    `&lt;`/`&gt;`. Text that is not one of the tags is returned unchanged."""
    pattern = _tag_pattern(tags)
    if pattern is None or not text:
        return text
    view, origin = normalize_with_map(text)
    pieces: list[str] = []
    last = 0
    for m in pattern.finditer(view):
        start, end = origin[m.start()], origin[m.end() - 1] + 1
        pieces += [text[last:start], _escape_brackets(text[start:end])]
        last = end
    return "".join(pieces) + text[last:] if pieces else text


def _escape_brackets(span: str) -> str:
    """The original span with every `<`/`>` look-alike written as `&lt;`/`&gt;` (the rest,
    letters included, is kept as written)."""
    out = []
    for ch in span:
        n = unicodedata.normalize("NFKD", ch).translate(_LOOKALIKES)
        out.append("&lt;" if n == "<" else "&gt;" if n == ">" else ch)
    return "".join(out)


def tagged_regions(text: str, tags: Iterable[str]) -> list[tuple[int, int]]:
    """(start, end) spans of `text` from an opening tag to the next closing tag (any
    variant). Used to keep a judge's echo of a data block from being read as the judge's
    own answer. An opening tag that is never closed spans nothing: a judge that merely
    mentions `<instruction>` in its prose must not hide the verdict that follows."""
    pattern = _tag_pattern(tags)
    if pattern is None or not text:
        return []
    view, origin = normalize_with_map(text)
    spans: list[tuple[int, int]] = []
    open_at: int | None = None
    for m in pattern.finditer(view):
        closing = m.group(1) == "/"
        if not closing and open_at is None:
            open_at = origin[m.start()]
        elif closing and open_at is not None:
            spans.append((open_at, origin[m.end() - 1] + 1))
            open_at = None
    return spans


def render_data(template: str, **values: str) -> str:
    """Render `$name` placeholders with every value's copies of the template's own tags
    neutralised first (string.Template: values are inserted verbatim, never re-expanded)."""
    tags = delimiter_tags(template)
    return Template(template).substitute(**{k: neutralize_tags(str(v), tags) for k, v in values.items()})
