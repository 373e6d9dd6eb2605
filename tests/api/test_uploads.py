"""`openrft jobs create` with a grader file that names files beside it: the grader is inlined,
its reward.py and schema file uploaded, and the server resolves them to its own copies."""

from __future__ import annotations

import json

import tomli_w

from openrft.cli import main
from openrft.rewards import build_grader
from tests.rewards._samples import make_sample

from .helpers import job_config

GRADER = """
type = "weighted"
name = "combo"

[[graders]]
weight = 1.0
type = "python_function"
name = "letter"
function = "reward.py:reward"

[[graders]]
weight = 0.5
type = "json"
name = "shape"
schema_file = "schema.json"
"""


def test_a_grader_files_sidecars_are_uploaded(idle_server, tmp_path, tiny_model_dir, monkeypatch):
    graders = tmp_path / "graders"
    graders.mkdir()
    (graders / "grader.toml").write_text(GRADER)
    (graders / "reward.py").write_text(
        "def reward(response, item):\n    return float(item['reference_answer'] in response)\n"
    )
    (graders / "schema.json").write_text(json.dumps({"type": "object", "required": ["a"]}))
    config = job_config(tmp_path / "job", tiny_model_dir)
    config["reward"]["grader"] = "../graders/grader.toml"  # relative to the config file
    path = tmp_path / "job" / "job.toml"
    path.write_text(tomli_w.dumps(config))
    monkeypatch.setenv("OPENRFT_SERVER", idle_server.url)
    monkeypatch.setenv("OPENRFT_TOKEN", idle_server.token)
    assert main(["jobs", "create", str(path)]) == 0

    [job] = idle_server.client.get("/api/jobs").json()["data"]
    grader = job["config"]["reward"]["grader"]
    function = grader["graders"][0]["function"]
    schema = grader["graders"][1]["schema_file"]
    files = str(idle_server.data_dir / "files")
    assert function.startswith(files) and function.endswith("reward.py:reward")
    assert schema.startswith(files) and schema.endswith("schema.json")
    built = build_grader(grader)  # what the worker does with the stored config
    [good, bad] = built.grade(
        [make_sample('{"a": "x"}', reference="x"), make_sample("[]", reference="x", index=1)]
    )
    assert good.score == 1.5 and bad.score == 0.0
