"""CJK-aware text helpers shared by metrics, cleaning, near-duplicate search and data construction.

One place decides what counts as CJK, a word, punctuation and a normalised string, so ROUGE, word
limits and Self-Instruct filters agree on every script.
"""

from __future__ import annotations

import re
import unicodedata

# Han (incl. extension A and compatibility), kana, Hangul syllables.
CJK_CLASS = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
CJK = re.compile(f"[{CJK_CLASS}]")
_CJK_TOKEN = re.compile(f"[{CJK_CLASS}]|[^\\W_]+", re.UNICODE)

NORMALIZATIONS = ("nfc", "nfkc", "none")


def has_cjk(text: str) -> bool:
    return bool(CJK.search(text))


def cjk_tokens(text: str) -> list[str]:
    """Lower-cased words, with every CJK character its own token (no Unicode folding: what you see is kept)."""
    return _CJK_TOKEN.findall(text.lower())


def word_count(text: str) -> int:
    """Words as people count them: whitespace-separated words, plus one per CJK character beyond the first
    of a run that has no spaces (so '你好世界' is 4 and 'hello world' is 2)."""
    count = 0
    for chunk in text.split():
        cjk = len(CJK.findall(chunk))
        rest = CJK.sub(" ", chunk).split()
        count += cjk + len(rest)
    return count


def is_punctuation_or_symbol(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PSZ"


def only_punctuation(text: str) -> bool:
    """True when the text has no letter or digit in any script (e.g. '。，的，。' is not; '。，，。' is)."""
    return not any(unicodedata.category(ch)[0] in "LN" for ch in text)


def mostly_punctuation(text: str, function_words: frozenset[str] = frozenset("的了是在和与或之")) -> bool:
    """No content: only punctuation, symbols, spaces and single-character function words (e.g. '。，的，。')."""
    return all(is_punctuation_or_symbol(ch) or ch.isspace() or ch in function_words for ch in text)


def normalize(text: str, form: str = "nfc") -> str:
    """Unicode normalisation by name: nfc keeps every visible character; nfkc folds compatibility forms
    (full-width punctuation to ASCII, ½ to 1⁄2); none leaves the text as read."""
    if form == "none":
        return text
    return unicodedata.normalize(form.upper(), text)


def squash_spaces(text: str) -> str:
    """Collapse every run of whitespace (incl. U+00A0 and other Unicode spaces) to one ASCII space."""
    return " ".join(text.split())
