"""`openrft data from-logs`: Bedrock's metadata filter semantics, openrft and Bedrock log
records, de-duplication, validation; end to end from a served model's invocation log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from openrft.data import load_examples
from openrft.data.from_logs import (
    FilterError,
    check_filter,
    filter_from_flags,
    matches,
    normalise,
    rows_from_logs,
    write_rows,
)
from openrft.errors import DatasetError

ADS = {"team": "ads", "env": "prod"}
SEARCH = {"team": "search", "env": "prod"}
DEV = {"team": "ads", "env": "dev"}


def _record(prompt: str, reply: str | None, metadata: dict, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    response = None if reply is None else {"choices": [{"message": {"content": reply}}]}
    return {
        "schema": "openrft.invocation/1",
        "id": "chatcmpl-1",
        "model": "m",
        "request": {"messages": messages, "max_tokens": 8},
        "requestMetadata": metadata,
        "response": response,
        "error": None if reply is not None else {"status": 400, "message": "bad"},
    }


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"equals": {"team": "ads"}}, [True, False, True]),
        ({"equals": {"team": "ads", "env": "prod"}}, [True, False, False]),
        ({"notEquals": {"team": "ads"}}, [False, True, False]),
        ({"notEquals": {"missing": "x"}}, [True, True, True]),  # a missing key is not equal
        ({"andAll": [{"equals": {"env": "prod"}}, {"notEquals": {"team": "search"}}]},
         [True, False, False]),
        ({"orAll": [{"equals": {"team": "search"}}, {"equals": {"env": "dev"}}]},
         [False, True, True]),
    ],
)  # fmt: skip
def test_bedrock_filter_semantics(spec, expected):
    check_filter(spec)
    assert [matches(spec, m) for m in (ADS, SEARCH, DEV)] == expected


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({}, "filter"),
        ({"equals": {"a": "b"}, "orAll": []}, "filter"),
        ({"like": {"a": "b"}}, "filter"),
        ({"equals": {"a": 1}}, "filter.equals.a"),
        ({"equals": {}}, "filter.equals"),
        ({"andAll": [{"equals": {"a": "b"}}, {"nope": 1}]}, r"filter.andAll\[1\]"),
        ({"orAll": "x"}, "filter.orAll"),
    ],
)
def test_malformed_filters_name_the_part(spec, where):
    with pytest.raises(FilterError, match=f"^{where}:"):
        check_filter(spec)


def test_flags_build_the_filter():
    assert filter_from_flags() is None
    assert filter_from_flags(["team=ads"]) == {"equals": {"team": "ads"}}
    spec = filter_from_flags(["env=prod"], ["team=search"], ["team=ads", "team=x=y"])
    assert spec == {
        "andAll": [
            {"equals": {"env": "prod"}},
            {"notEquals": {"team": "search"}},
            {"orAll": [{"equals": {"team": "ads"}}, {"equals": {"team": "x=y"}}]},
        ]
    }
    with pytest.raises(FilterError, match="--where takes KEY=VALUE"):
        filter_from_flags(["team"])


def test_rows_filtered_deduplicated_and_validated(tmp_path):
    log = _write(
        tmp_path / "log.jsonl",
        [
            _record("good film", "positive", ADS, system="one word"),
            _record("good film", "negative", ADS, system="one word"),  # same prompt: dropped
            _record("bad film", "negative", SEARCH),
            _record("dull film", None, ADS),  # failed call
            _record("   ", "x", ADS),  # empty user turn: invalid
            _record("dev film", "positive", DEV),
            "{not json",
            {"something": "else"},
        ],
    )
    rows, report = rows_from_logs([log], {"equals": {"team": "ads"}}, use_responses=True)
    assert [r["messages"][-1]["content"] for r in rows] == ["good film", "dev film"]
    assert rows[0]["messages"][0] == {"role": "system", "content": "one word"}
    assert rows[0]["reference_answer"] == "positive"  # the first reply of the duplicates
    assert rows[0]["metadata"]["team"] == "ads" and rows[0]["metadata"]["source_log"].endswith(":1")
    assert report.read == 8 and report.written == 2 and report.duplicates == 1
    assert report.filtered_out == 1  # the search call
    reasons = dict(report.skipped)
    assert reasons["the call failed or has no reply"] == 1
    assert any(r.startswith("invalid prompt (messages[0].content") for r in reasons)
    assert any(r.startswith("not JSON") for r in reasons)
    assert reasons["neither an openrft nor a Bedrock invocation record"] == 1

    out = write_rows(rows, tmp_path / "data.jsonl")
    examples = load_examples(out)  # the loader takes it: metadata fields reach the grader
    assert [e.reference_answer for e in examples] == ["positive", "positive"]
    assert examples[0].metadata["team"] == "ads" and examples[0].id.startswith("log-")


def test_without_use_responses_the_reference_comes_from_metadata(tmp_path):
    log = _write(
        tmp_path / "log.jsonl",
        [_record("2+2?", "5", {"reference_answer": "4"}), _record("3+3?", "6", {})],
    )
    rows, _ = rows_from_logs([log])
    assert rows[0]["reference_answer"] == "4" and "reference_answer" not in rows[0]["metadata"]
    assert "reference_answer" not in rows[1]
    # The replies ("5", "6") are nowhere in the rows: only the prompts and metadata are.
    values = [m["content"] for r in rows for m in r["messages"]]
    values += [str(v) for r in rows for v in r["metadata"].values()]
    assert "5" not in values and "6" not in values


def test_bedrock_invocation_records_are_read():
    converse = {
        "schemaType": "ModelInvocationLog",
        "modelId": "amazon.nova-lite-v1:0",
        "requestMetadata": {"project": "x"},
        "input": {
            "inputBodyJson": {
                "system": [{"text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"text": "Hi "}, {"text": "there"}]}],
            }
        },
        "output": {"outputBodyJson": {"output": {"message": {"content": [{"text": "Hello!"}]}}}},
    }
    invocation = normalise(converse, "log:1")
    assert invocation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert invocation.response == "Hello!" and invocation.metadata == {"project": "x"}
    assert invocation.model == "amazon.nova-lite-v1:0"
    chat = {
        "input": {"inputBodyJson": {"messages": [{"role": "user", "content": "Q"}]}},
        "output": {"outputBodyJson": {"choices": [{"message": {"content": "A"}}]}},
    }
    assert normalise(chat, "log:2").response == "A"
    image = {
        "input": {"inputBodyJson": {"messages": [{"role": "user", "content": [{"image": 1}]}]}}
    }
    assert normalise(image, "log:3") == "a message is not text"


def test_nothing_passing_is_an_error_and_a_missing_file_is_named(tmp_path):
    log = _write(tmp_path / "log.jsonl", [_record("hello", "hi", ADS)])
    rows, _ = rows_from_logs([log], {"equals": {"team": "nobody"}})
    with pytest.raises(DatasetError, match="no log record passed the filter"):
        write_rows(rows, tmp_path / "out.jsonl")
    with pytest.raises(Exception, match="missing.jsonl: no such log file"):
        rows_from_logs([tmp_path / "missing.jsonl"])


def test_from_a_served_model_to_a_data_set(tmp_path, tiny_model_dir):
    """The server logs real calls; from-logs (the CLI) turns the tagged ones into data."""
    from serve import running_server

    from openrft.serve.app import create_app

    log_path = tmp_path / "invocations.jsonl"
    app = create_app(str(tiny_model_dir), device="cpu", log_path=str(log_path))
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for i, team in enumerate(["ads", "search", "ads", "ads"]):
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": f"review {i % 3}"}],
                max_tokens=6,
                metadata={"team": team},
            )
    out = tmp_path / "from-logs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "data", "from-logs", str(log_path)]
        + ["--where", "team=ads", "--use-responses", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "records read: 4" in done.stdout and "rows written: 2" in done.stdout
    assert "duplicate prompts dropped: 1" in done.stdout  # "review 0" was asked twice
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    examples = load_examples(out)
    assert [e.messages[-1]["content"] for e in examples] == ["review 0", "review 2"]
    assert examples[0].reference_answer == logged[0]["response"]["choices"][0]["message"]["content"]

    bad = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "data", "from-logs", str(log_path)]
        + ["--filter", '{"like": {"team": "ads"}}', "--out", str(tmp_path / "x.jsonl")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "filter.andAll" not in bad.stderr and "like" not in bad.stdout
    assert "must be an object with exactly one of" in bad.stderr
