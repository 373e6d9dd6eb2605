"""Text-similarity metrics of OpenAI's `text_similarity` grader, each a score in [0, 1].

`METRICS[name](text, reference)` for the names OpenAI uses. Each metric comes from a
well-kept library; the choices, and where they differ from a textbook setup:

- fuzzy_match: rapidfuzz `fuzz.ratio` / 100, i.e. 1 - Indel distance / (len(a) + len(b)) on the
  raw characters (case and whitespace count, no preprocessing). Symmetric, whole-string, and
  1.0 only for equal strings. Not `partial_ratio` (1.0 whenever the reference appears anywhere,
  so padding a response costs nothing), nor the token sort/set ratios (they ignore word order,
  and repeating the reference's words inflates token_set_ratio), nor WRatio (a heuristic blend
  of those). Two empty strings score 1.0.
- bleu: sacreBLEU `sentence_bleu` / 100 with its defaults (13a tokenizer, case-sensitive,
  "exp" smoothing), so scores match the published sacreBLEU signature.
- gleu: nltk `sentence_gleu` (Google-BLEU, 1- to 4-grams) on `words()` tokens.
- meteor: nltk `meteor_score` (alpha 0.9, beta 3, gamma 0.5) on `words()` tokens, with exact
  and Porter-stem matching only. WordNet cannot be installed offline, so a stand-in whose
  `synsets()` returns [] turns synonym matching off: a response that paraphrases with
  synonyms ("quick" for "fast") scores lower than with WordNet METEOR.
- rouge_1 .. rouge_5, rouge_l: `rouge_score.RougeScorer` F-measure, stemmer off (as in
  rouge_score and Hugging Face `evaluate` defaults: Porter stemming is English-only and merges
  unrelated words such as "university"/"universe"). rouge_score's own tokenizer keeps only
  [a-z0-9], so "naïve" becomes "na ve" and Chinese text has no tokens at all; `words()`
  replaces it.

`words()` replaces the punkt tokenizer nltk would use (its data cannot be downloaded offline):
Unicode letters and digits, NFKC-normalised and casefolded, punctuation dropped, and each CJK
ideograph or kana its own token (those scripts do not separate words with spaces).

Size caps (long responses are legitimate inputs, not errors): every text is cut to its first
MAX_CHARS characters, which bounds rapidfuzz's Indel distance (about O(n * m / 64)) and
sacreBLEU to tens of milliseconds; rouge_l's longest common subsequence is a pure-Python
O(n * m) table, so it also sees only the first LCS_MAX_TOKENS tokens (at most about 1 s).

An empty text (after tokenization, for the token metrics) scores 0.0, except that fuzzy_match
gives two empty strings 1.0. Every result is checked to be finite and clamped to [0, 1]:
sacreBLEU returns 100.00000000000004 for identical sentences.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Callable

import sacrebleu
from nltk.stem.porter import PorterStemmer
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

MAX_CHARS = 50_000  # characters of each text that any metric sees
LCS_MAX_TOKENS = 2_000  # tokens of each text that rouge_l's O(n * m) table sees

# Ideographs and kana are written without spaces, so each character is a token.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")

UNAVAILABLE = {
    "cosine": (
        "needs an embedding model, which openrft does not ship (it runs offline); use "
        "fuzzy_match, bleu, gleu, meteor, rouge_1..rouge_5 or rouge_l, or a python or "
        "score_model grader for semantic similarity"
    ),
}


def words(text: str) -> list[str]:
    """Word tokens: runs of Unicode letters/digits and single CJK characters, after NFKC (so
    full-width "ＡＢＣ" is "abc") and casefolding."""
    return _WORD.findall(unicodedata.normalize("NFKC", text[:MAX_CHARS]).casefold())


class _NoSynonyms:
    """Stands in for nltk's WordNet reader in METEOR: no word has synonyms (see the docstring)."""

    def synsets(self, word: str) -> list[object]:
        return []


class _RougeTokenizer:
    """rouge_score's tokenizer interface over `words()`, keeping at most `limit` tokens."""

    def __init__(self, limit: int | None):
        self.limit = limit

    def tokenize(self, text: str) -> list[str]:
        return words(text)[: self.limit]


_NO_SYNONYMS = _NoSynonyms()
_STEMMER = PorterStemmer()


def _unit(value: float) -> float:
    """A metric value as a score: finite, clamped to [0, 1] against float rounding."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"similarity metric returned {value}")
    return min(1.0, max(0.0, value))


def fuzzy_match(text: str, reference: str) -> float:
    return _unit(fuzz.ratio(text[:MAX_CHARS], reference[:MAX_CHARS], processor=None) / 100.0)


def bleu(text: str, reference: str) -> float:
    text, reference = text[:MAX_CHARS], reference[:MAX_CHARS]
    if not text.strip() or not reference.strip():
        return 0.0
    return _unit(sacrebleu.sentence_bleu(text, [reference]).score / 100.0)


def gleu(text: str, reference: str) -> float:
    hypothesis, expected = words(text), words(reference)
    if not hypothesis or not expected:
        return 0.0
    return _unit(sentence_gleu([expected], hypothesis, min_len=1, max_len=4))


def meteor(text: str, reference: str) -> float:
    hypothesis, expected = words(text), words(reference)
    if not hypothesis or not expected:
        return 0.0
    score = meteor_score([expected], hypothesis, stemmer=_STEMMER, wordnet=_NO_SYNONYMS)
    return _unit(score)


@functools.cache
def _rouge_scorer(kind: str) -> rouge_scorer.RougeScorer:
    limit = LCS_MAX_TOKENS if kind == "rougeL" else None
    return rouge_scorer.RougeScorer([kind], use_stemmer=False, tokenizer=_RougeTokenizer(limit))


def rouge(kind: str) -> Callable[[str, str], float]:
    """The F-measure of one rouge_score type ("rouge1".."rouge5", "rougeL")."""

    def score(text: str, reference: str) -> float:
        scorer = _rouge_scorer(kind)
        # rouge_score's argument order is (target, prediction).
        return _unit(scorer.score(reference, text)[kind].fmeasure)

    score.__name__ = kind
    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": rouge("rougeL"),
}
