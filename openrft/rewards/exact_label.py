"""The `exact_label` built-in grader: 1.0 when the response equals the reference label.

Owns label normalisation (case, whitespace, punctuation and symbols, Unicode forms), so that
"Paris." matches "paris" while "The answer is Paris" does not: this grader is for
classification-style tasks where the model must answer with the label alone.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence

from openrft.types import Grade, Sample


def normalize_label(text: str) -> str:
    """NFKC, casefold, drop punctuation and symbols (Unicode P* and S*), collapse whitespace.

    NFKC first so that full-width letters and ligatures compare equal to their plain forms;
    casefold is the Unicode-aware lowercase ("Straße" == "strasse").
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(kept.split())


class ExactLabelGrader:
    """Scores 1.0 when the normalised response equals any acceptable normalised reference."""

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    name = "exact_label"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [self._grade_one(sample) for sample in samples]

    def _grade_one(self, sample: Sample) -> Grade:
        start = time.perf_counter()
        labels, problem = _reference_labels(sample)
        if problem:
            return Grade.failed("invalid_output", problem, time.perf_counter() - start)
        score = 1.0 if normalize_label(sample.response) in labels else 0.0
        return Grade(score, {self.name: score}, latency_s=time.perf_counter() - start)


def _reference_labels(sample: Sample) -> tuple[set[str], str]:
    """The normalised acceptable labels, or an empty set and why the row cannot be graded."""
    row = sample.example_id or sample.id
    reference = sample.reference_answer
    if reference is None:
        return set(), f"row {row} has no reference_answer"
    options = list(reference) if isinstance(reference, list | tuple) else [reference]
    if any(isinstance(option, dict | list | tuple) for option in options):
        return set(), (
            f"row {row}: exact_label needs a string or a list of strings as reference_answer, "
            f"got {type(reference).__name__}"
        )
    # A label that normalises to "" (e.g. "?") would make every empty response correct.
    labels = {normalize_label(str(option)) for option in options if option is not None} - {""}
    if not labels:
        return set(), f"row {row}: reference_answer {reference!r:.80} has no letters or digits"
    return labels, ""
