"""The `math_answer` built-in grader: 1.0 when the model's final answer equals the reference.

Owns final-answer extraction (GSM8K `####`, LaTeX `\\boxed{}`, else the last number), number
parsing (ints, decimals, "1,234", "$18.00", "18 eggs", "3/4", `\\frac{3}{4}`) and the exact
comparison with `fractions.Fraction`, so 18 == 18.00 == 36/2 with no float tolerance.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction

from openrft.rewards.worker_pool import WorkerPool
from openrft.types import Grade, Sample

_UNSIGNED = r"(?:[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?|\.[0-9]+)"
# The last number of a text: a TeX fraction, or a decimal (with thousands commas) optionally
# over another. The lookbehind stops a match starting mid-number, so "1.5" never yields "5"
# and the range "3-5" ends in 5, not -5.
_ANY_NUMBER = re.compile(
    rf"-?\\[dt]?frac\s*\{{[^{{}}]*\}}\s*\{{[^{{}}]*\}}|-?\\[dt]?frac[0-9][0-9]"
    rf"|(?<![0-9.])(?:-\\?\$|-)?{_UNSIGNED}(?:\s*/\s*-?{_UNSIGNED})?"
)
_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_LEADING_NUMBER = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:"
    rf"\\[dt]?frac\s*\{{\s*(?P<tex_num>{_NUM})\s*\}}\s*\{{\s*(?P<tex_den>{_NUM})\s*\}}"
    rf"|\\[dt]?frac(?P<short_num>[0-9])(?P<short_den>[0-9])"  # \frac34
    rf"|(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?)"
)
_BRACE_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
_TEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_COMMA = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_TEX_NOISE = ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "\\ ", "\\left", "\\right")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def _ascii_digits(text: str) -> str:
    """Maps decimal digits of any script ("١٨", "１８") to ASCII and Unicode minus signs to "-"."""
    if text.isascii():
        return text
    text = text.translate(_MINUS_SIGNS)
    return "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text
    )


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}`, nested braces included, in one pass."""
    stack: list[int | None] = []  # content start for a \boxed brace, None for a plain brace
    best: tuple[int, int] | None = None
    for token in _BRACE_TOKENS.finditer(text):
        if token.group(0) == "}":
            start = stack.pop() if stack else None
            if start is not None and (best is None or start > best[0]):
                best = (start, token.start())
        else:
            stack.append(None if token.group(0) == "{" else token.end())
    return text[best[0] : best[1]].strip() if best else None


def _last_number(text: str) -> str | None:
    last = None
    for last in _ANY_NUMBER.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    return last.group(0) if last else None


def extract_final_answer(text: str) -> str | None:
    """The model's final answer, or None when the text has none.

    Order: the text after the LAST "####" (its first line when that is a number, else the
    boxed/last number within it, else that line); else the last `\\boxed{...}`; else the last
    number. Digits of any script come back as ASCII digits.
    """
    text = _ascii_digits(text)
    marker = text.rfind("####")
    if marker != -1:
        region = text[marker + 4 :].strip()
        first_line = region.splitlines()[0].strip() if region else ""
        if first_line and parse_number(first_line) is not None:
            return first_line
        # "#### Final answer\nIt is 18" (a markdown heading) still finds the 18.
        inner = _last_boxed(region) or _last_number(region)
        if inner or first_line:
            return inner or first_line
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    return _last_number(text)


def _clean(text: str) -> str:
    """Strips what surrounds a number: $, %, TeX spacing, \\text{} units, "x =", markdown."""
    text = _TEX_TEXT.sub(r" \1", _ascii_digits(text))
    for noise in _TEX_NOISE:
        text = text.replace(noise, "" if noise != "\\ " else " ")
    text = text.strip().strip("*`\"' \t\n")
    if "=" in text:  # "x = 5" -> "5"
        text = text.rsplit("=", 1)[1]
    text = text.strip().rstrip(".").strip()
    return _THOUSANDS_COMMA.sub("", text)


def _only_words(rest: str) -> bool:
    """True for trailing units/words ("dollars", "eggs per day."), false for "+ 5" or "2/3"."""
    return any(ch.isalpha() for ch in rest) and all(
        ch.isalpha() or ch.isspace() or ch in ".'\u2019" for ch in rest
    )


def parse_number(text: str) -> Fraction | None:
    """The exact value of a numeric answer ("-1,234.5", "$18.00", "18 eggs", "3/4",
    `\\frac{3}{4}`, "50%"), or None when the text is not a single number (possibly with
    trailing words). A percent sign is dropped, not divided out: "50%" is 50."""
    cleaned = _clean(text)
    match = _LEADING_NUMBER.match(cleaned)
    if match is None:
        return None
    rest = cleaned[match.end() :].strip()
    if rest and not _only_words(rest):
        return None
    groups = match.groupdict()
    top = groups["tex_num"] or groups["short_num"] or groups["num"]
    bottom = groups["tex_den"] or groups["short_den"] or groups["den"] or "1"
    try:
        value = Fraction(Fraction(top), Fraction(bottom))
    except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
        return None
    return -value if groups["sign"] == "-" else value


def _normalize_text(text: str) -> str:
    """Fallback comparison form for non-numeric answers ("\\frac{\\pi}{2}", "x+1", "B")."""
    text = _TEX_TEXT.sub(r"\1", _ascii_digits(text))
    for noise in _TEX_NOISE:
        text = text.replace(noise, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return "".join(text.split()).rstrip(".").casefold()


def answers_match(answer: str, reference: str) -> bool:
    """Exact numeric equality when both parse as numbers, else normalised string equality."""
    answer_value, reference_value = parse_number(answer), parse_number(reference)
    if answer_value is not None and reference_value is not None:
        return answer_value == reference_value
    return _normalize_text(answer) == _normalize_text(reference)


SYMBOLIC_MAX_CHARS = 1000  # longer answers are not handed to sympy (it can take minutes)
SYMBOLIC_WORKERS = 2  # math-verify worker processes at most, shared by every math grader


class MathAnswerGrader:
    """Scores 1.0 when the extracted final answer equals the reference answer, else 0.0.

    A response without any extractable answer is a wrong answer (score 0.0, component
    answer_found = 0.0), not a grader error: the policy should learn to answer. A row
    without a usable reference IS an error (invalid_output): no score would be honest.
    """

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(
        self, name: str = "math_answer", symbolic: bool = True, symbolic_timeout_s: float = 5.0
    ):
        self.name = name
        self.symbolic = symbolic  # fall back to math-verify's symbolic equivalence (x+1 == 1+x)
        self.symbolic_timeout_s = symbolic_timeout_s

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [self._grade_one(sample) for sample in samples]

    def _grade_one(self, sample: Sample) -> Grade:
        start = time.perf_counter()
        references, problem = _reference_answers(sample)
        if problem:
            return Grade.failed("invalid_output", problem, time.perf_counter() - start)
        answer = extract_final_answer(sample.response)
        if answer is None:
            components = {self.name: 0.0, "answer_found": 0.0}
            return Grade(0.0, components, latency_s=time.perf_counter() - start)
        score = 1.0 if any(answers_match(answer, ref) for ref in references) else 0.0
        components = {self.name: score, "answer_found": 1.0}
        if score == 0.0 and self.symbolic and len(answer) <= SYMBOLIC_MAX_CHARS:
            for reference in references:
                if parse_number(answer) is not None and parse_number(reference) is not None:
                    continue  # two numbers: the exact comparison above is final
                matched, timed_out = symbolic_match(answer, reference, self.symbolic_timeout_s)
                if timed_out:  # visible, but a pathological answer is still not a correct one
                    components["verify_timeout"] = 1.0
                if matched:
                    score = components[self.name] = 1.0
                    break
        return Grade(score, components, latency_s=time.perf_counter() - start)


def _reference_answers(sample: Sample) -> tuple[list[str], str]:
    """The acceptable reference answers, or an empty list and why the row cannot be graded."""
    row = sample.example_id or sample.id
    reference = sample.reference_answer
    if reference is None:
        return [], f"row {row} has no reference_answer"
    options = list(reference) if isinstance(reference, list | tuple) else [reference]
    answers: list[str] = []
    for option in options:
        if isinstance(option, dict | list | tuple) or option is None:
            return [], f"row {row}: math_answer cannot use reference_answer {reference!r:.80}"
        text = str(option).strip()
        # A full GSM8K solution ("... #### 18") or a boxed answer holds the answer inside it;
        # a bare reference is used as is, so "x + 1" is not cut down to its last number.
        if "####" in text or "\\boxed" in text:
            text = extract_final_answer(text) or ""
        if text:
            answers.append(text)
    if not answers:
        return [], f"row {row}: reference_answer {reference!r:.80} holds no answer"
    return answers, ""


def symbolic_match(answer: str, reference: str, timeout_s: float) -> tuple[bool, bool]:
    """(equivalent, timed_out) by math-verify (sympy), e.g. \\frac{1}{2} == 0.5, x+1 == 1+x.

    The check runs in a worker process of a pool shared by this process, killed (and
    replaced) when it overruns `timeout_s`: sympy can spin for hours in C code that holds the
    GIL (`2^{2^{2^{2^{2^{2}}}}}`), so neither math-verify's SIGALRM nor a thread can stop it.
    A worker that crashes counts as "not equivalent".
    """
    [outcome] = _symbolic_pool().map([(answer, reference)], timeout_s)
    if outcome.status == "timeout":
        return False, True
    return outcome.status == "ok" and outcome.value is True, False


def symbolic_setup() -> tuple[Callable[[tuple[str, str]], bool], None]:
    """Runs in a math-verify worker (see WorkerPool): imports sympy once, returns the check."""
    from math_verify import parse, verify  # sympy is slow to import: workers only

    # Its "Timeout is disabled" warning, once per worker: the timeout is ours (the kill).
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def check(request: tuple[str, str]) -> bool:
        answer, reference = request
        try:
            gold = parse(f"${reference}$", parsing_timeout=None)
            target = parse(f"${answer}$", parsing_timeout=None)
            return bool(gold and target and verify(gold, target, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - unparsable input is simply not equivalent
            return False

    return check, None


_symbolic_workers: WorkerPool | None = None
_symbolic_lock = threading.Lock()


def _symbolic_pool() -> WorkerPool:
    """The process-wide math-verify pool, started on first use (its workers boot lazily)."""
    global _symbolic_workers
    with _symbolic_lock:
        if _symbolic_workers is None:
            _symbolic_workers = WorkerPool(
                "openrft.rewards.math_answer:symbolic_setup",
                size=SYMBOLIC_WORKERS,
                name="math-verify",
            )
        return _symbolic_workers
