"""Similarity metrics: values worked out by hand, tokenization, empty and adversarial text,
and 1 MB inputs that must finish quickly (the size caps)."""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from openrft.rewards.similarity import LCS_MAX_TOKENS, MAX_CHARS, METRICS, UNAVAILABLE, words

OPENAI_METRICS = {
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor",
    "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
}  # fmt: skip
TOKEN_METRICS = sorted(set(METRICS) - {"fuzzy_match", "bleu"})


def test_every_openai_metric_is_implemented_or_explained() -> None:
    assert set(METRICS) | set(UNAVAILABLE) == OPENAI_METRICS
    assert "embedding model" in UNAVAILABLE["cosine"]


# "the cat sat" against "the cat ran": 3 words each, "the cat" shared.
CAT = ("the cat sat", "the cat ran")


@pytest.mark.parametrize(
    ("metric", "pair", "expected"),
    [
        # LCS of the characters is "the cat a" (9): 1 - (11 + 11 - 2 * 9) / 22 = 18 / 22.
        ("fuzzy_match", CAT, 18 / 22),
        # "kitten"/"sitting": LCS "ittn" (4), Indel distance 6 + 7 - 8 = 5, so 1 - 5 / 13.
        ("fuzzy_match", ("kitten", "sitting"), 8 / 13),
        # Precisions 2/3 (1-grams), 1/2 (2-grams), 0/1 (3-grams, "exp"-smoothed to 1/2);
        # no 4-grams, so the effective order is 3 and the brevity penalty is 1.
        ("bleu", CAT, (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3)),
        # 1..4-grams: 6 in each text, 3 shared ("the", "cat", "the cat"): min(3/6, 3/6).
        ("gleu", CAT, 0.5),
        # 2 matches: P = R = F = 2/3; one chunk, penalty 0.5 * (1/2)^3 = 1/16.
        ("meteor", CAT, 2 / 3 * 15 / 16),
        ("rouge_1", CAT, 2 / 3),  # P = R = 2/3
        ("rouge_2", CAT, 1 / 2),  # bigrams: "the cat" of 2
        ("rouge_3", CAT, 0.0),
        ("rouge_l", CAT, 2 / 3),  # LCS "the cat"
        # Porter stems match: "cats"~"cat", "running"~"run"; penalty 0.5 * (1/2)^3.
        ("meteor", ("cats running", "cat run"), 15 / 16),
        # WordNet is stood in for by "no synonyms": "quick" does not match "fast".
        ("meteor", ("quick", "fast"), 0.0),
        # 9 words in one chunk: 1 - 0.5 * (1/9)^3.
        ("meteor", ("the quick brown fox jumps over the lazy dog",) * 2, 1 - 0.5 / 729),
        ("rouge_5", ("the quick brown fox jumps over the lazy dog",) * 2, 1.0),
        ("rouge_4", ("one two three", "one two three"), 0.0),  # too short for a 4-gram
        ("rouge_1", ("cats", "cat"), 0.0),  # rouge's stemmer is off
        # Case: BLEU is case-sensitive (1-grams 1/2, 2-grams 0/1 smoothed to 1/2) ...
        ("bleu", ("Hello world", "hello world"), 0.5),
        ("fuzzy_match", ("Hello world", "hello world"), 20 / 22),  # ... and so is fuzzy_match,
        ("rouge_1", ("Hello WORLD", "hello world"), 1.0),  # the token metrics casefold.
        ("gleu", ("Hello WORLD", "hello world"), 1.0),
        ("rouge_l", ("Paris!", "paris"), 1.0),  # punctuation is not a token
        ("bleu", ("the cat sat on the mat", "the cat sat on the mat"), 1.0),  # clamped
    ],
)
def test_hand_computed_values(metric: str, pair: tuple[str, str], expected: float) -> None:
    assert METRICS[metric](*pair) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("don't stop-me_now 3.14", ["don", "t", "stop", "me", "now", "3", "14"]),
        ("naïve café", ["naïve", "café"]),
        ("cafe\u0301", ["café"]),  # NFKC composes the combining accent
        ("ＡＢＣ ﬁne", ["abc", "fine"]),  # full-width letters and the "fi" ligature
        ("Straße", ["strasse"]),  # casefold
        ("我爱你abc", ["我", "爱", "你", "abc"]),
        ("ひらがな", ["ひ", "ら", "が", "な"]),
        ("Привет мир", ["привет", "мир"]),
        ("🙂 !!! \u202e", []),
        ("", []),
    ],
)
def test_words(text: str, tokens: list[str]) -> None:
    assert words(text) == tokens


@pytest.mark.parametrize(
    ("metric", "pair", "expected"),
    [
        ("rouge_1", ("我爱你", "我爱他"), 2 / 3),
        ("rouge_l", ("naïve approach", "naïve approach"), 1.0),
        ("rouge_1", ("café", "cafe"), 0.0),  # accents are kept, not stripped
        ("rouge_1", ("cafe\u0301", "café"), 1.0),
        ("gleu", ("ＡＢＣ", "abc"), 1.0),
        ("meteor", ("Привет мир", "привет мир"), 1 - 0.5 / 8),
        ("fuzzy_match", ("🙂", "🙂"), 1.0),
        ("fuzzy_match", ("Pаris", "Paris"), 0.8),  # Cyrillic "а": 1 - 2 / 10
    ],
)
def test_unicode(metric: str, pair: tuple[str, str], expected: float) -> None:
    assert METRICS[metric](*pair) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("pair", [("", "Paris"), ("Paris", ""), ("", ""), ("  ", "  ")])
def test_empty_text_scores_zero(metric: str, pair: tuple[str, str]) -> None:
    text, reference = pair
    expected = 1.0 if metric == "fuzzy_match" and text == reference else 0.0
    assert METRICS[metric](text, reference) == expected


@pytest.mark.parametrize("metric", TOKEN_METRICS)
@pytest.mark.parametrize("pair", [("!!!", "Paris"), ("Paris", "..."), ("🙂", "🙂")])
def test_text_without_words_scores_zero_on_token_metrics(
    metric: str, pair: tuple[str, str]
) -> None:
    assert METRICS[metric](*pair) == 0.0


ADVERSARIAL = [
    "",
    " ",
    "\x00\x01\x02",
    "\n\n\t",
    "a",
    "a a a a a a a a a a",
    "the the the the the",
    "🙂" * 50,
    "\u202eevil\u202c",
    "<script>alert(1)</script>",
    '{"answer": "Paris", "extra": [1, 2, {"x": null}]}',
    "NaN inf -inf 1e309",
    "Paris",
    "Paris " * 100,
    "\ud800",  # a lone surrogate: not valid UTF-8, still a Python str
]


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_adversarial_pairs_stay_in_the_unit_interval(metric: str) -> None:
    for text, reference in itertools.product(ADVERSARIAL, repeat=2):
        value = METRICS[metric](text, reference)
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (text, reference, value)


def _megabyte_of_words(seed: int) -> str:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5_000)]
    return " ".join(rng.choice(vocabulary) for _ in range(200_000))[:1_000_000]


@pytest.fixture(scope="module")
def megabytes() -> tuple[str, str]:
    return _megabyte_of_words(1), _megabyte_of_words(2)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_one_megabyte_inputs_finish_quickly(metric: str, megabytes: tuple[str, str]) -> None:
    big, other = megabytes
    for text, reference in [(big, "w1 w2 w3"), ("w1 w2 w3", big), (big, other)]:
        start = time.perf_counter()
        value = METRICS[metric](text, reference)
        assert time.perf_counter() - start < 5.0, metric
        assert 0.0 <= value <= 1.0


def test_the_caps_cut_long_texts() -> None:
    # Past MAX_CHARS, fuzzy_match sees nothing more, so a long tail does not change the score.
    assert METRICS["fuzzy_match"]("a" * MAX_CHARS + "tail", "a" * MAX_CHARS) == 1.0
    # rouge_l sees the first LCS_MAX_TOKENS tokens; rouge_1 sees them all.
    head = " ".join(f"w{i}" for i in range(LCS_MAX_TOKENS))
    assert METRICS["rouge_l"](head + " extra words", head) == 1.0
    assert METRICS["rouge_1"](head + " extra words", head) < 1.0
