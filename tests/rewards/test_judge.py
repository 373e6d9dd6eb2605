"""LLM-judge graders: reply parsing tables, rubric rendering, spec checks, and `judge`,
`score_model` and `label_model` against a scripted OpenAI-compatible server on 127.0.0.1 and a
local judge model. (tests/serve/test_app.py runs them against openrft's own server.)"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from serve import Reply, ScriptedChat, running_server
from transformers import AutoTokenizer

from openrft.data.render import encode_prompt
from openrft.errors import GraderError
from openrft.rewards.grader import grade_safely
from openrft.rewards.judge import GRADER_TYPES, JudgeGrader, JudgeParams
from openrft.rewards.registry import build_grader
from openrft.rewards.rubrics import (
    RUBRICS,
    ReplyError,
    judge_messages,
    parse_label,
    parse_score,
    parse_scores,
    scale_guide,
)
from openrft.rewards.spec import SpecContext
from openrft.types import GRADE_ERROR_KINDS, Sample

from ._samples import make_sample

P, INV, R = "parse_error", "invalid_output", "judge_refusal"

# --- parsing -----------------------------------------------------------------------------------

SCORES_1_10 = [
    ("8", 8), ("Score: 8/10", 8), ("**7.5**", 7.5), ("Rating: 8 out of 10", 8),
    ('{"score": 8}', 8), ('{"Score": "6.5"}', 6.5), ('```json\n{"rating": 4}\n```', 4),
    ('The reply is fine.\n{"score": 7}', 7), ("Reasoning first.\nFinal score: 6", 6),
    ("Accurate but verbose.\n\nScore: 7", 7), ("Score (1-10): 9", 9), ("**Score:** 3", 3),
    ("Score:\n7", 7), ("score = 3.5", 3.5), ("The score is 7", 7), ("Overall rating: 8/10", 8),
    ("I'd give it 8 out of 10.", 8), ("I rate it 7 on a scale of 1-10.", 7),
    ("On a scale from 1 to 10, this is a 4", 4), ("1. Clear\n2. Accurate\n3. Short\nScore: 9", 9),
    ("Helpfulness score: 8\nFinal score: 7", 7), ("Score: 8\nScore: 8", 8),
    ("Score: 8\nScore: 6", 6), ("The answer is right.\n9", 9), ("No errors found. 10", 10),
    ("Score: 8 - solid answer", 8), ("10", 10), ("1", 1), ("Final Score: **9**", 9),
    ("Grade: 5", 5), ("I can't give it full marks. Score: 6", 6), ("Step 2 is wrong.\n4", 4),
    ("", P), ("   \n", P), ("Score: 7 or 8", P), ("7-8", P), ("between 6 and 8", P),
    ("Score: 7 to 8", P), ("Helpfulness score: 8\nAccuracy score: 5", P),
    ("Score: 8\nAfter reconsideration, Score: 6", P), ("It has 3 steps and 2 errors.\nDecent.", P),
    ("Great response!", P), ('{"score": "high"}', P), ('{"score": true}', P),
    ("Score: 15", INV), ("15", INV), ("Score: 0", INV), ("score: -3", INV), ("Score: 4/5", INV),
    ('{"score": 11}', INV), ("Score: 80%", INV), ("I can't help with that.", R),
    ("I cannot evaluate this response.", R), ("I'm sorry, but I can't assist with grading.", R),
    ("I won't be able to rate this content.", R), ("Sorry, I\u2019m unable to evaluate that.", R),
]  # fmt: skip
SCORES_0_1 = [
    ("0.8", 0.8), ("Score: 0.75", 0.75), ("Score: 1", 1.0), ("Score: .5", 0.5), ("0", 0.0),
    ("I would rate 0.9 on a 0 to 1 scale", 0.9), ("Score: 8/10", INV), ("Score: 80%", INV),
]  # fmt: skip
GROUPS_OF_3 = [
    ("Response 1: 7\nResponse 2: 3\nResponse 3: 10", [7, 3, 10]),
    ('{"scores": [5, 6, 7]}', [5, 6, 7]), ("[4, 9, 1]", [4, 9, 1]),
    ('[{"score": 2}, {"score": 3}, {"score": 4}]', [2, 3, 4]),
    ("**Response 1**: 8/10\n**Response 2**: 2/10\n**Response 3**: 5/10", [8, 2, 5]),
    ("Response 1 is best.\nResponse #1 - 9\nResponse #2 - 4\nResponse #3 - 6", [9, 4, 6]),
    ("Response 1 (concise): 8\nResponse 2 (wrong): 2\nResponse 3 score: 5", [8, 2, 5]),
    ("Response 1: 5\nResponse 2: 6\nResponse 3: 7\nOn reflection:\nResponse 1: 4", [4, 6, 7]),
    ("Response 1: 7\nResponse 2: 3", P), ("Response 1: 7\nResponse 2: 3\nResponse 3: 5\n"
                                          "Response 4: 2", P),
    ('{"scores": [5, 6]}', P), ("Response 1: 9\nResponse 2: 7-8\nResponse 3: 1", P),
    ("Response 1: 9\nResponse 2: 11\nResponse 3: 1", INV), ("I can't evaluate these responses.", R),
    ("All good.", P), ("", P),
]  # fmt: skip
LABELS = ["correct", "incorrect", "partially correct"]
LABEL_CASES = [
    ("correct", "correct"), ("Incorrect.", "incorrect"), ('"Correct"', "correct"),
    ("The answer is wrong.\nLabel: incorrect", "incorrect"), ('{"label": "correct"}', "correct"),
    ('{"verdict": "INCORRECT"}', "incorrect"), ("**Label:** partially correct", LABELS[2]),
    ("The response is correct because it says 4.", "correct"),
    ("It misses a step, so it is partially correct.", "partially correct"),
    ("Looks correct at first, but it is incorrect.\nLabel: incorrect", "incorrect"),
    ('{"label": "maybe"}', P), ("It could be correct or incorrect.", P), ("No idea.", P),
    ("I can't help with that.", R), ("", P), ("Label: correct or incorrect", P),
]  # fmt: skip


PARSERS: dict[str, Callable[[str], Any]] = {
    "1-10": lambda text: parse_score(text, 1, 10),
    "0-1": lambda text: parse_score(text, 0, 1),
    "group": lambda text: parse_scores(text, 3, 1, 10),
    "label": lambda text: parse_label(text, LABELS),
}
TABLES = {"1-10": SCORES_1_10, "0-1": SCORES_0_1, "group": GROUPS_OF_3, "label": LABEL_CASES}


@pytest.mark.parametrize(
    ("parser", "text", "expected"),
    [(name, text, expected) for name, table in TABLES.items() for text, expected in table],
)
def test_reply_parsing(parser: str, text: str, expected: Any) -> None:
    """A score, scores or label; or the kind of error (a ReplyError, with a message)."""
    try:
        outcome = PARSERS[parser](text)
    except ReplyError as exc:
        assert exc.kind in GRADE_ERROR_KINDS and str(exc)
        outcome = exc.kind
    assert outcome == expected


# --- rubrics ---------------------------------------------------------------------------------


def _sample(rubric: str, response: str, index: int = 0) -> Sample:
    """A realistic row per rubric."""
    rows: dict[str, tuple[list[dict[str, str]], Any, dict[str, Any]]] = {
        "instruction_following": (
            [{"role": "system", "content": "Answer in exactly three bullet points."},
             {"role": "user", "content": "Why write unit tests?"}], None, {}),
        "summarization": (
            [{"role": "user", "content": "Summarize:\nAlice: Can we ship Friday?\nBob: Only if "
              "QA signs off by Thursday.\nAlice: I'll ask Carol today."}],
            "Shipping Friday depends on QA sign-off by Thursday; Alice will ask Carol.", {}),
        "reasoning": (
            [{"role": "user", "content": "A train goes 60 km/h for 2.5 h. How far?"}], "150km", {}),
        "rag_faithfulness": (
            [{"role": "user", "content": "When was the bridge opened?"}], None,
            {"context": "The Old Bridge was opened in 1883 and rebuilt in 1921."}),
        "custom": ([{"role": "user", "content": "Plan a day in Lyon."}], None, {"city": "Lyon"}),
    }  # fmt: skip
    messages, reference, metadata = rows[rubric]
    return Sample(
        id=f"{rubric}:{index}",
        messages=(*messages, {"role": "assistant", "content": response}),  # type: ignore[arg-type]
        reference_answer=reference,
        metadata=metadata,
        example_id=rubric,
    )


@pytest.mark.parametrize("rubric", sorted(RUBRICS))
def test_every_rubric_renders_with_a_realistic_row(rubric: str) -> None:
    criteria = "The plan must name {{ item.city }}." if rubric == "custom" else ""
    sample = _sample(rubric, "It {{ item.reference_answer }} stays as written.")
    samples = [sample, _sample(rubric, "A second answer.", 1), _sample(rubric, "A third.", 2)]
    single = judge_messages(RUBRICS[rubric], criteria, (1, 10), [sample])
    group = judge_messages(RUBRICS[rubric], criteria, (1, 10), samples, relative=True)
    for messages in (single, group):
        assert [m["role"] for m in messages] == ["system", "user"]
        system, user = messages[0]["content"], messages[1]["content"]
        # A response is never rendered: its placeholder-like text stays; nothing else is left.
        assert user.count("{{ item.reference_answer }}") == 1
        rest = (system + user).replace("{{ item.reference_answer }}", "")
        assert "{{" not in rest and "}}" not in rest
        assert "- 9-10:" in system and "- 1-2:" in system
        assert f"[user]\n{sample.messages[-2]['content']}" in user  # the prompt, as a transcript
        if sample.reference_answer:
            assert f"<reference_answer>\n{sample.reference_answer}\n</reference_answer>" in user
        if rubric == "rag_faithfulness":
            assert "<context>\nThe Old Bridge was opened in 1883" in user
        if rubric == "custom":
            assert "Criteria:\nThe plan must name Lyon." in system
    assert single[0]["content"].endswith("Score: <a number from 1 to 10>")
    assert group[0]["content"].endswith("Response 3: <score>")
    assert '<response id="2">\nA second answer.\n</response>' in group[1]["content"]


def test_single_prompts_ask_for_one_score_line() -> None:
    sample = _sample("reasoning", "150")
    plain = judge_messages(RUBRICS["reasoning"], "", (0, 100), [sample])[0]["content"]
    assert plain.endswith("Score: <a number from 0 to 100>") and "Additional" not in plain
    extra = judge_messages(RUBRICS["reasoning"], "Units matter.", (1, 10), [sample])[0]["content"]
    assert "Additional criteria for this task:\nUnits matter." in extra


@pytest.mark.parametrize(
    ("scale", "bands"),
    [
        ((1, 10), ["9-10", "7-8", "5-6", "3-4", "1-2"]), ((1, 5), ["5", "4", "3", "2", "1"]),
        ((0, 10), ["9-10", "7-8", "5-6", "3-4", "0-2"]),
        ((0, 1), ["about 1", "about 0.75", "about 0.5", "about 0.25", "about 0"]),
        ((1, 3), ["about 3", "about 2.5", "about 2", "about 1.5", "about 1"]),
    ],
)  # fmt: skip
def test_scale_guide_maps_levels_onto_the_scale(scale: tuple[int, int], bands: list[str]) -> None:
    guide = scale_guide(RUBRICS["custom"].levels, *scale)
    assert re.findall(r"^- (.+?):", guide, re.MULTILINE) == bands


# --- specs -----------------------------------------------------------------------------------

URL = "http://127.0.0.1:9/v1"


def _build(spec: dict[str, Any]) -> JudgeGrader:
    grader = GRADER_TYPES[spec["type"]](spec, SpecContext(source="judge.toml"))
    assert isinstance(grader, JudgeGrader)
    return grader


J = {"type": "judge", "rubric": "reasoning", "base_url": URL, "model": "m"}
S = {
    "type": "score_model",
    "model": "m",
    "base_url": URL,
    "input": [{"role": "user", "content": "x"}],
}
L = {**S, "type": "label_model", "labels": ["a", "b"], "passing_labels": ["a"]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "judge", "rubric": "reasoning", "model": "m"}, "base_url: is required"),
        ({**J, "local_model": "x"}, "not both"),
        ({"type": "judge", "base_url": URL, "model": "m"}, "rubric: is required"),
        ({**J, "rubric": "custom"}, "criteria: is required"),
        ({**J, "rubric": "nice"}, "not one of"),
        ({"type": "judge", "rubric": "reasoning", "base_url": URL}, "model: is required"),
        ({**J, "base_url": "ftp://x"}, "http(s)"), ({**J, "scale": [5, 1]}, "scale: must be [low"),
        ({**J, "scale": [1, True]}, "scale: must be [low, high]"),
        ({**J, "group_mode": "x"}, "group_mode"),
        ({**J, "retries": 99}, "retries: must be between 0 and 10"),
        ({**J, "scael": [1, 2]}, "did you mean 'scale'"),
        ({**J, "api_key_env": "$KEY"}, "api_key_env: must name an environment variable"),
        ({**J, "criteria": "{{ sample.output_txt }}"}, "sample has output_text"),
        ({"type": "judge", "rubric": "reasoning", "local_model": "no-such-model"},
         "local_model: unknown model"),
        ({**S, "input": []}, "input: must list"),
        ({**S, "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({**S, "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "text parts"),
        ({**S, "sampling_params": {"temprature": 0}}, "sampling_params.temprature"),
        ({**L, "passing_labels": ["c"]}, "not in labels"),
        ({**L, "labels": ["a", "A"]}, "distinct"),
    ],
)  # fmt: skip
def test_spec_mistakes_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(GraderError) as caught:
        _build(spec)
    assert str(caught.value).startswith("judge.toml: ")
    assert message in str(caught.value)


def test_openai_graders_default_to_the_openai_api(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"type": "score_model", "model": "o4-mini", "input": [{"role": "user", "content": "x"}]}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    grader = _build(spec)  # checking a spec needs no secret: the key is read per batch
    client = grader.client
    assert client.url == "https://api.openai.com/v1/chat/completions"  # type: ignore[attr-defined]
    assert client.api_key_env == "OPENAI_API_KEY"  # type: ignore[attr-defined]
    assert grader.params == JudgeParams(None, None, None, None)  # all left to the server
    grades = grader.grade([make_sample("a"), make_sample("b", index=1)])  # sends nothing
    assert {(g.error.kind, g.error.message) for g in grades} == {
        ("runtime_error", "api_key_env: the environment variable OPENAI_API_KEY is not set")
    }


# --- against a scripted judge server -----------------------------------------------------------


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[ScriptedChat, str]]:
    script = ScriptedChat()
    with running_server(script.app()) as url:
        yield script, f"{url}/v1"


@pytest.fixture
def judge_server(scripted: tuple[ScriptedChat, str]) -> tuple[ScriptedChat, str]:
    scripted[0].reset()
    return scripted


def _judge(url: str, **fields: Any) -> JudgeGrader:
    spec = {"type": "judge", "rubric": "instruction_following", "base_url": url, "model": "jm"}
    return _build({**spec, **fields})


def _prompt_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def test_single_mode_scores_each_sample(judge_server, monkeypatch: pytest.MonkeyPatch) -> None:
    script, url = judge_server
    script.respond = lambda body, n: "Good.\nScore: 10" if "alpha" in _prompt_text(body) else "3"
    monkeypatch.setenv("OPENRFT_TEST_JUDGE_KEY", "sk-123")
    grader = _judge(url, name="if", api_key_env="OPENRFT_TEST_JUDGE_KEY", concurrency=2)
    grades = grade_safely(grader, [make_sample("alpha"), make_sample("beta", index=1)])
    assert [g.score for g in grades] == [1.0, pytest.approx(2 / 9)]
    tokens = {"judge/prompt_tokens": 100.0, "judge/completion_tokens": 10.0}
    assert grades[0].components == {"if": 1.0, **tokens}
    body = script.bodies[0]
    assert body["model"] == "jm" and body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 256 and "seed" not in body
    assert body["messages"][0]["role"] == "system"
    assert {h["authorization"] for h in script.headers} == {"Bearer sk-123"}


def test_relative_mode_judges_each_group_in_one_call(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: (
        "Response 1: 9\nResponse 2: 5\nResponse 3: 1" if "ex-a" not in _prompt_text(body) else "?"
    )
    # Interleaved examples still group by example id, each group in its original order.
    samples = [make_sample(f"answer {e}{i}", example_id=f"ex-{e}", index=i)
               for i in range(3) for e in "ab"]  # fmt: skip
    samples[0] = make_sample("{{ item.reference_answer }} is ex-a", example_id="ex-a")
    grades = grade_safely(_judge(url, group_mode="relative"), samples)
    assert len(script.bodies) == 2
    assert script.bodies[0]["max_completion_tokens"] == 512
    b_prompt = next(_prompt_text(b) for b in script.bodies if "ex-a" not in _prompt_text(b))
    assert b_prompt.index('<response id="1">\nanswer b0') < b_prompt.index('<response id="3">')
    by_id = {s.id: g for s, g in zip(samples, grades, strict=True)}
    assert [by_id[f"ex-b:{i}"].score for i in range(3)] == pytest.approx([8 / 9, 4 / 9, 0.0])
    assert by_id["ex-b:0"].components["judge/prompt_tokens"] == pytest.approx(100 / 3)
    for i in range(3):  # "?" scores no response of ex-a: the whole group is a parse_error
        assert by_id[f"ex-a:{i}"].error.kind == "parse_error"
        assert by_id[f"ex-a:{i}"].components["judge/completion_tokens"] == pytest.approx(10 / 3)


@pytest.mark.parametrize(
    ("reply", "kind", "says"),
    [
        (Reply("I'm sorry, but I can't help with that."), R, "the judge refused"),
        (Reply(None, extra={"message": {"content": None, "refusal": "no"}}), R, "refused: no"),
        (Reply("x", extra={"finish_reason": "content_filter"}), R, "content filter"),
        (Reply("Score: 42"), INV, "outside [1, 10]"),
        (Reply("Score: 7 or 8"), P, "ambiguous"),
        (Reply("Let me think", extra={"finish_reason": "length"}), P, "raise max_tokens"),
        (Reply(None), "server_error", "no text content"),
        (Reply(body=b"<html>oops</html>"), "server_error", "no chat completion: '<html>"),
        (Reply(body=b'{"choices": []}'), "server_error", "no chat completion"),
        (Reply(status=401), "server_error", "HTTP 401"),
        (Reply(status=404), "server_error", "HTTP 404"),
    ],
)
def test_failures_are_typed_never_zero(judge_server, reply: Reply, kind: str, says: str) -> None:
    script, url = judge_server
    script.respond = lambda body, n: reply
    (grade,) = grade_safely(_judge(url, retries=2), [make_sample("fine")])
    assert grade.score is None and grade.error.kind == kind and says in grade.error.message
    assert len(script.bodies) == 1  # none of these is retried


def test_5xx_then_success_is_retried(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: Reply(status=500) if n == 0 else "Score: 8"
    (grade,) = _judge(url, retries=2).grade([make_sample("x")])
    assert grade.score == pytest.approx(7 / 9) and len(script.bodies) == 2
    assert grade.latency_s >= 0.5  # the back-off


def test_429_honours_retry_after_and_gives_up_after_retries(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: Reply(status=429, headers={"retry-after": "0"})
    (grade,) = _judge(url, retries=3).grade([make_sample("x")])
    assert grade.error.kind == "server_error" and "after 4 attempts" in grade.error.message
    assert "HTTP 429" in grade.error.message and len(script.bodies) == 4
    assert grade.latency_s < 0.5  # Retry-After: 0 replaced the back-off


def test_a_hanging_judge_times_out(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: Reply("Score: 9", delay_s=1.5)
    (grade,) = _judge(url, timeout_s=0.5, retries=2).grade([make_sample("x")])
    assert grade.error.kind == "timeout" and "0.5 s" in grade.error.message
    assert len(script.bodies) == 1 and grade.latency_s < 1.2


def test_an_unreachable_judge_is_a_server_error() -> None:
    (grade,) = _judge("http://127.0.0.1:9/v1", retries=0).grade([make_sample("x")])
    assert grade.error.kind == "server_error"


def test_concurrency_bounds_requests_in_flight(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: Reply("Score: 5", delay_s=0.2)
    grades = _judge(url, concurrency=3).grade([make_sample(f"r{i}", index=i) for i in range(7)])
    assert all(g.score == pytest.approx(4 / 9) for g in grades)
    assert script.max_in_flight == 3


TEMPLATE = (
    "Q: {{ sample.input_text }}\nA: {{ sample.output_text }}\nRef: {{ item.reference_answer }}"
)


def test_score_model_renders_its_input(judge_server) -> None:
    script, url = judge_server
    script.respond = lambda body, n: "Why.\nScore: 0.7" if "A: 42" in _prompt_text(body) else "3"
    spec = {
        "type": "score_model", "name": "quality", "model": "jm", "base_url": url, "range": [0, 1],
        "input": [
            {"role": "system", "content": "Grade answers."},
            {"role": "user", "content": [{"type": "input_text", "text": TEMPLATE}]},
        ],
        "sampling_params": {"temperature": 0.2, "seed": 7, "max_completions_tokens": 64,
                            "reasoning_effort": "high"},
    }  # fmt: skip
    grader = _build(spec)
    first, second = grader.grade(
        [make_sample("42", reference="42"), make_sample("41", reference="42", index=1)]
    )
    assert first.score == 0.7 and first.components["quality"] == 0.7
    assert second.error.kind == "invalid_output"  # 3 is outside [0, 1]
    body = next(b for b in script.bodies if "A: 42" in _prompt_text(b))
    assert body["temperature"] == 0.2 and body["seed"] == 7 and body["max_completion_tokens"] == 64
    assert "reasoning_effort" not in body and "top_p" not in body
    user = body["messages"][1]["content"]
    assert user.startswith("Q: [user]\nWhat is the answer?\nA: 42\nRef: 42")
    assert user.endswith("`Score: <number from 0 to 1>`.")


def test_a_template_that_does_not_resolve_fails_only_its_sample(judge_server) -> None:
    script, url = judge_server
    content = "{{ item.topic }}: {{ sample.output_text }}"
    spec = {"type": "score_model", "model": "jm", "base_url": url,
            "input": [{"role": "user", "content": content}]}  # fmt: skip
    script.respond = lambda body, n: "Score: 1"
    grades = _build(spec).grade([make_sample("a", metadata={"topic": "t"}), make_sample("b")])
    assert grades[0].score == 1.0
    assert grades[1].error.kind == "parse_error" and "topic" in grades[1].error.message
    assert len(script.bodies) == 1


def test_label_model_passes_and_fails(judge_server) -> None:
    script, url = judge_server
    replies = {"a": "Label: correct", "b": "Clearly incorrect.", "c": "Label: unsure"}
    script.respond = lambda body, n: next(
        r for k, r in replies.items() if f"A={k}" in _prompt_text(body)
    )
    spec = {"type": "label_model", "name": "check", "model": "jm", "base_url": url,
            "input": [{"role": "user", "content": "A={{ sample.output_text }}"}],
            "labels": ["correct", "incorrect"], "passing_labels": ["correct"]}  # fmt: skip
    grades = _build(spec).grade([make_sample(k, index=i) for i, k in enumerate("abc")])
    assert [g.score for g in grades[:2]] == [1.0, 0.0]
    assert grades[2].error.kind == "parse_error"
    assert _prompt_text(script.bodies[0]).endswith("`Label: <one of: correct, incorrect>`.")


def test_the_registry_builds_judges_from_grader_files(judge_server, tmp_path: Path) -> None:
    script, url = judge_server
    script.respond = lambda body, n: "Score: 5"
    path = tmp_path / "judge.toml"
    path.write_text(f'type = "judge"\nname = "tone"\ncriteria = "Polite."\nbase_url = "{url}"\n'
                    'model = "jm"\nscale = [0, 5]\n')  # fmt: skip
    grader = build_grader(str(path))
    assert grader.name == "tone"
    assert grade_safely(grader, [make_sample("hi")])[0].score == 1.0


# --- a local judge model ----------------------------------------------------------------------

GROUP = [make_sample(f"the answer is {40 + i}", reference="42", index=i) for i in range(3)]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A tiny model gains nothing from threads; OpenMP threads fighting other work lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_local_judge_counts_tokens_exactly(tiny_model_dir: Path, one_thread: None) -> None:
    """Random text must never become a 0 or a NaN: a score in [0, 1], or a typed error."""
    sampling = {"max_completions_tokens": 8, "temperature": 1.0, "seed": 1}
    spec = {"type": "score_model", "local_model": str(tiny_model_dir), "range": [0, 10],
            "input": [{"role": "user", "content": "Rate: {{ sample.output_text }}"}],
            "sampling_params": sampling}  # fmt: skip
    grader = _build(spec)
    grades = grader.grade(GROUP[:2])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for sample, grade in zip(GROUP, grades, strict=False):
        assert (grade.error is None and 0 <= grade.score <= 10) or grade.error.kind in (P, INV, R)
        prompt = encode_prompt(grader.prompt([sample]), tokenizer)
        assert grade.components["judge/prompt_tokens"] == len(prompt)
        assert 0 < grade.components["judge/completion_tokens"] <= 8


def test_a_local_judge_reports_prompts_beyond_its_context(tiny_model_dir: Path) -> None:
    grader = _build({"type": "judge", "rubric": "reasoning", "local_model": str(tiny_model_dir)})
    (grade,) = grader.grade(GROUP[:1])
    assert grade.error.kind == "runtime_error"
    assert "exceeds the judge's context (512)" in grade.error.message


@pytest.mark.real_model
def test_smollm2_as_a_local_judge() -> None:
    spec = {"type": "judge", "rubric": "reasoning", "local_model": "smollm2-135m-instruct"}
    grades = grade_safely(_build({**spec, "max_tokens": 64}), GROUP[:2])
    assert len(grades) == 2
    for grade in grades:  # a 135M model is no judge: what matters is that nothing is untyped
        scored = grade.error is None and 0.0 <= grade.score <= 1.0
        assert scored or (grade.score is None and grade.error.kind in GRADE_ERROR_KINDS)
