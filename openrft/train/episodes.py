"""A job's episodes: the `[env]` config turned into the rollout's EpisodeSetup, and episodes
turned into what grading and the update need (samples, combined rewards, per-turn rewards).

- Tools only (`env.tools`, `env.tool_endpoints`): the built-in ToolEnvironment runs the
  calls the model's own format expresses (the parser the chat template implies); a row's
  `tools` schemas are shown to the model, or the file's when the row has none.
- An environment (`env.environment = "file.py:make_env"`): the user's object answers turns;
  or an environment service (`env.environment = "http://host:port"`,
  openrft/rollout/remote_env.py) answers them over HTTP; or an OpenEnv server
  (`env.openenv_url`, openrft/rollout/openenv_env.py).
- An agent (`env.agent = "file.py:run"`): the user's function calls the policy through an
  OpenAI client (openrft.rollout.agents) and returns the episode's reward.
- A verifiers taskset (`env.verifiers = "my_taskset"`): its tasks are the rows; verifiers
  runs the episodes in its own venv and scores them (openrft.rollout.verifiers_env).
- Rewards (`env.reward`): "episode" = the grader's score of the whole conversation; "turns" =
  the sum of the environment's per-turn rewards (no grader call); "sum" = both. An episode
  whose environment failed is a failed grade (left out, counted), never a reward of 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from openrft.config import EnvConfig, JobConfig
from openrft.data import encode_prompt, resolve_data_path
from openrft.data.tool_rows import chat_tool
from openrft.errors import ConfigError
from openrft.models.load import resolve_model_dir
from openrft.paths import AGENT_FILE
from openrft.rewards.grader import to_grade
from openrft.rollout.agent_proxy import AgentProxy
from openrft.rollout.agents import run_agent_episodes, run_external_episodes
from openrft.rollout.bridge import ChatBridge
from openrft.rollout.environment import (
    EnvironmentWorkers,
    InProcessEnvironments,
    Runner,
    ToolEnvironment,
    load_environment_factory,
    user_environments,
)
from openrft.rollout.episodes import Episode, EpisodeLimits, EpisodeSetup, run_episodes
from openrft.rollout.openenv_env import OpenEnvService, OpenEnvSettings
from openrft.rollout.remote_env import RemoteService, RemoteSettings, is_remote
from openrft.rollout.tool_calls import ParsedTurn, parser_for
from openrft.rollout.tools import ToolBox
from openrft.rollout.verifiers_env import VerifiersSettings, VerifiersWorker
from openrft.types import Completion, Example, Grade, Sample, SamplingParams

CUT_REASONS = ("max_turns", "length", "timeout")  # limits that cut an episode short
BUILTIN = "builtin:"
EXTERNAL = "external"  # env.agent: agents outside openrft take rollouts over HTTP
RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # built-in tools and environments


def builtin_reference(spec: str, kind: str, field: str, function: str) -> str:
    """`builtin:<name>` -> `<openrft's file>:<function>` (a built-in environment's
    make_env, a built-in agent's run); other values unchanged."""
    if not spec.startswith(BUILTIN):
        return spec
    return f"{builtin_file(spec, kind, field)}:{function}"


def builtin_file(spec: str, kind: str, field: str) -> str:
    """`builtin:<name>` -> openrft's own file of that name under recipes/<kind>/; other
    values unchanged."""
    if not spec.startswith(BUILTIN):
        return spec
    path = RECIPES / kind / f"{spec.removeprefix(BUILTIN)}.py"
    if not path.is_file():
        known = ", ".join(f"{BUILTIN}{p.stem}" for p in sorted((RECIPES / kind).glob("*.py")))
        raise ConfigError(field, f"unknown built-in {spec!r}; choices: {known}")
    return str(path)


@dataclass
class EpisodeJob:
    """The job's episode machinery and the config that shapes its rewards."""

    setup: EpisodeSetup
    config: EnvConfig
    tools: ToolBox | None
    parser_name: str
    chat_template: str = "model"  # model.chat_template: how the proxy renders agents' calls
    service: RemoteService | OpenEnvService | None = None  # a remote environment's client
    agent: Callable[..., Any] | None = None  # env.agent's function
    proxy: AgentProxy | None = None  # serves the agent's calls (started on the first run)
    verifiers: VerifiersWorker | None = None  # env.verifiers: the worker running its episodes
    environments: EnvironmentWorkers | InProcessEnvironments | None = None  # env.environment's
    announced: Path | None = None  # RUN_DIR/agent.json while external agents may connect

    @property
    def external(self) -> bool:
        """env.agent = "external": agents outside openrft take the rollouts over HTTP."""
        return self.config.agent == EXTERNAL

    @property
    def self_scored(self) -> bool:
        """The episode's own code gives its reward (an agent, external or not, or a
        verifiers taskset): no grader is called."""
        return self.agent is not None or self.external or self.verifiers is not None

    def run(
        self,
        engine: Any,
        examples: Sequence[Example],
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams,
    ) -> list[list[Completion]]:
        """params.n episodes per example: the engine against the environment or tools, or
        the agent function calling the engine through the proxy."""
        if not self.self_scored:
            return run_episodes(engine, examples, prompt_ids, params, self.setup)
        limits = self.setup.limits
        proxy = self.agent_proxy()
        proxy.generate = engine.generate
        proxy.params = replace(params, n=1, max_new_tokens=limits.max_new_tokens)
        if self.verifiers is not None:
            return self.verifiers.run(proxy, examples, params.n, self.config.max_concurrent)
        if self.external:
            return run_external_episodes(proxy, examples, params.n, limits.timeout_s)
        assert self.agent is not None
        return run_agent_episodes(
            proxy, self.agent, examples, params.n, self.setup.runner, limits.timeout_s
        )

    def agent_proxy(self) -> AgentProxy:
        """The proxy serving agents' calls, started on first use (external agents: at job
        start, on env.agent_host:env.agent_port, so the URL can be shown)."""
        if self.proxy is None:
            limits = self.setup.limits
            self.proxy = AgentProxy(
                _no_engine_yet,
                self.setup.tokenizer,
                self.chat_template,
                SamplingParams(max_new_tokens=limits.max_new_tokens),
                limits.max_turns,
                limits.max_tokens,
                self.setup.end_token_ids,
            )
            self.proxy.start(self.config.agent_host, self.config.agent_port)
        return self.proxy

    def announce(self, run_dir: Path) -> None:
        """External agents: write where they connect (RUN_DIR/agent.json, which the job
        server reads to forward /api/jobs/{id}/agent/v1/...); removed when the job ends."""
        if not self.external:
            return
        path = run_dir / AGENT_FILE
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"url": self.agent_proxy().url}))
        partial.replace(path)
        self.announced = path

    def describe(self) -> str:
        """For the job's log: what answers the turns, and the limits."""
        env, limits = self.config, self.setup.limits
        if self.tools is not None:
            names = ", ".join(self.tools.names) or "(from the rows)"
            what = f"tools {names} ({self.parser_name} calls)"
        elif self.external:
            what = (
                f"external agents: rollouts from POST {self.agent_proxy().url}rollouts, "
                "rewards to POST .../rollouts/{id}/reward"
            )
        elif self.agent is not None:
            what = f"agent {env.agent} (its calls served by the policy)"
        elif self.verifiers is not None:
            what = (
                f"verifiers taskset {env.verifiers} ({len(self.verifiers.tasks)} tasks, "
                f"harness {env.verifiers_harness or 'its own'})"
            )
        elif env.openenv_url:
            what = f"OpenEnv server {env.openenv_url} (actions: {env.openenv_action})"
        else:
            what = f"environment {env.environment}"
        return (
            f"{what}; up to {limits.max_turns} turns, {limits.max_tokens} tokens, "
            f"{limits.timeout_s:g} s per episode; reward: {env.reward}"
        )

    def close(self) -> None:
        self.setup.runner.close()
        if self.tools is not None:
            self.tools.close()
        if self.service is not None:
            self.service.close()
        if self.proxy is not None:
            self.proxy.stop()
        if self.verifiers is not None:
            self.verifiers.close()
        if self.environments is not None:
            self.environments.close()
        if self.announced is not None:
            self.announced.unlink(missing_ok=True)


def row_tools(example: Example, tools: ToolBox | None) -> list[dict[str, Any]] | None:
    """The tool schemas the model is shown for a row: the row's own `tools`, else the tools
    file's (declared once, for every row), else none."""
    own = example.metadata.get("tools")
    if own:
        return [chat_tool(tool) for tool in own]
    if tools is not None and tools.schemas:
        return list(tools.schemas.values())
    return None


def episode_job(
    config: JobConfig, tokenizer: Any, end_token_ids: frozenset[int]
) -> EpisodeJob | None:
    """The setup of a job with `[env]`, or None for a single-turn job."""
    env = config.env
    if not env.enabled:
        return None
    template = config.model.chat_template
    tools: ToolBox | None = None
    service: RemoteService | OpenEnvService | None = None
    agent: Callable[..., Any] | None = None
    verifiers: VerifiersWorker | None = None
    environments: EnvironmentWorkers | InProcessEnvironments | None = None
    if env.tools or env.tool_endpoints:
        tools = ToolBox(
            builtin_file(env.tools, "tools", "env.tools") or None,
            env.tool_endpoints,
            env.tool_timeout_s,
            env.max_concurrent,
            env.tool_headers,
        )
        parser_name, parser = parser_for(env.tool_parser, getattr(tokenizer, "chat_template", ""))

        def make_env(example: Example) -> Any:
            return ToolEnvironment(tools, row_tools(example, None) or ())

    elif env.agent:
        if env.agent != EXTERNAL:
            reference = builtin_reference(env.agent, "agents", "env.agent", "run")
            agent = load_environment_factory(reference, "env.agent", "file.py:run")
        parser_name, parser = "none", ParsedTurn

        def make_env(example: Example) -> Any:
            raise AssertionError("an agent's episodes have no environment object")

    elif env.verifiers:
        taskset, directory = taskset_location(env.verifiers)
        # "builtin:<data set>/<split>" values name openrft's own data files (prepared here).
        args = {
            name: str(resolve_data_path(value, f"env.verifiers_args.{name}"))
            if isinstance(value, str) and value.startswith(BUILTIN)
            else value
            for name, value in env.verifiers_args.items()
        }
        verifiers = VerifiersWorker(
            VerifiersSettings(
                taskset,
                args,
                env.verifiers_python,
                env.verifiers_harness,
                env.max_turns,
                env.episode_timeout_s,
                (directory,),
                # verifiers renders prompts with the model directory's own tokenizer.
                str(resolve_model_dir(config.model.name)),
                verifiers_tool_parser(env.verifiers_tool_parser, tokenizer),
            )
        )
        parser_name, parser = "none", ParsedTurn

        def make_env(example: Example) -> Any:
            raise AssertionError("verifiers runs its episodes itself")

    elif env.openenv_url:
        openenv = OpenEnvService(
            OpenEnvSettings(
                env.openenv_url.rstrip("/"),
                env.openenv_action,
                env.remote_timeout_s,
                env.remote_headers,
                env.openenv_max_sessions or None,
            )
        )
        openenv.check()
        service = openenv
        parser_name, parser = _environment_parser(env, tokenizer)

        def make_env(example: Example) -> Any:
            return openenv.environment(example.item())

    elif is_remote(env.environment):
        service = RemoteService(
            RemoteSettings(
                env.environment.rstrip("/"),
                env.remote_timeout_s,
                env.remote_retries + 1,
                headers=env.remote_headers,
            )
        )
        service.check()
        parser_name, parser = _environment_parser(env, tokenizer)

        def make_env(example: Example) -> Any:
            return service.environment(example.item())

    else:
        reference = builtin_reference(env.environment, "envs", "env.environment", "make_env")
        environments = user_environments(
            reference, env.isolation, env.episode_timeout_s, env.environment
        )
        parser_name, parser = _environment_parser(env, tokenizer)

        def make_env(example: Example) -> Any:
            return environments.make(example.item())

    bridges: dict[str, ChatBridge] = {}

    def bridge_for(example: Example) -> ChatBridge:
        schemas = row_tools(example, tools)
        key = json.dumps(schemas, sort_keys=True)
        if key not in bridges:
            bridges[key] = ChatBridge(tokenizer, template, schemas)
        return bridges[key]

    def encode(example: Example, opening: Sequence[Mapping[str, Any]]) -> list[int]:
        return encode_prompt(opening, tokenizer, template, row_tools(example, tools))  # type: ignore[arg-type]

    limits = EpisodeLimits(
        env.max_turns, env.max_episode_tokens, env.episode_timeout_s, config.rollout.max_new_tokens
    )
    setup = EpisodeSetup(
        tokenizer,
        parser,
        make_env,
        bridge_for,
        encode,
        limits,
        Runner(env.max_concurrent),
        end_token_ids,
        config.rollout.stop,
    )
    job = EpisodeJob(
        setup,
        env,
        tools,
        parser_name,
        template,
        service,
        agent,
        verifiers=verifiers,
        environments=environments,
    )
    if job.external:
        job.agent_proxy()  # listening from the start: agents may connect before step 1
    return job


def taskset_location(spec: str) -> tuple[str, str]:
    """env.verifiers -> (the id verifiers resolves, the directory its module imports from):
    a path to a package or .py file names its directory; `builtin:<name>` is openrft's own
    (openrft/recipes/verifiers/); an id imports from the working directory (or an
    installed package)."""
    if spec.startswith(BUILTIN):
        path = RECIPES / "verifiers" / spec.removeprefix(BUILTIN)
        if not path.is_dir():
            folders = (RECIPES / "verifiers").iterdir()
            tasksets = sorted(p for p in folders if p.is_dir() and not p.name.startswith("_"))
            known = ", ".join(f"{BUILTIN}{p.name}" for p in tasksets)
            raise ConfigError("env.verifiers", f"unknown built-in {spec!r}; choices: {known}")
        return path.name, str(path.parent)
    if "/" in spec or spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.exists():
            raise ConfigError("env.verifiers", f"{spec}: no such taskset module or package")
        return path.stem, str(path.parent)
    return spec, str(Path.cwd())


def verifiers_tool_parser(name: str, tokenizer: Any) -> str | None:
    """The tool parser verifiers' renderer reads the model's calls with: "auto" picks
    "hermes" (openrft's: <tool_call> JSON, or bare JSON lines; registered by the worker)
    where the chat template writes <tool_call>; "none" (or auto on a template without
    them) runs tool-less tasksets only; other names are renderers' own ("qwen3", ...)."""
    if name == "none":
        return None
    if name != "auto":
        return name
    return "hermes" if "<tool_call>" in (getattr(tokenizer, "chat_template", "") or "") else None


def _no_engine_yet(prompts: Any, params: Any) -> Any:
    raise RuntimeError("the agent proxy was asked to generate before a rollout started")


def _environment_parser(env: EnvConfig, tokenizer: Any) -> tuple[str, Any]:
    """An environment reads the turn's text itself unless env.tool_parser names a format."""
    if env.tool_parser == "auto":
        return "none", ParsedTurn
    return parser_for(env.tool_parser, tokenizer.chat_template)


def episode_sample(example: Example, index: int, completion: Completion) -> Sample:
    episode: Episode = completion.episode
    return Sample(
        id=f"{example.id}:{index}",
        messages=tuple(episode.messages()),  # type: ignore[arg-type]
        reference_answer=example.reference_answer,
        metadata=example.metadata,
        example_id=example.id,
        completion_tokens=episode.sampled_tokens,
        prompt_messages=len(episode.opening),
    )


def turn_reward_sum(episode: Episode) -> float:
    return sum(t.reward for t in episode.turns if t.reward is not None)


def combined_grade(episode: Episode, grade: Grade | None, mode: str) -> Grade:
    """The episode's grade as `env.reward` combines the grader's score (None: not graded)
    and the environment's per-turn rewards."""
    if episode.finish_reason == "error":
        return Grade.failed("runtime_error", f"environment: {episode.error}")
    turns = turn_reward_sum(episode)
    if mode == "turns":
        return Grade(turns, {"turn_rewards": turns})
    assert grade is not None
    if mode == "episode" or grade.score is None:
        return grade
    return Grade(
        grade.score + turns, {**grade.components, "turn_rewards": turns}, None, grade.latency_s
    )


def needs_grader(mode: str) -> bool:
    return mode != "turns"


def agent_grade(episode: Episode, mode: str = "episode") -> Grade:
    """An agent's (or a taskset's) episode's grade, as `env.reward` says: "episode" = what
    it returned (a number, or a dict of numbers with "score"); "turns" = the sum of the
    per-call rewards it gave ("turn_rewards"); "sum" = both. A failure when it raised,
    timed out, or gave nothing the mode needs."""
    if episode.finish_reason in ("error", "timeout"):
        kind = "timeout" if episode.finish_reason == "timeout" else "runtime_error"
        return Grade.failed(kind, f"agent: {episode.error}")
    rewarded = any(t.reward is not None for e in (episode, *episode.branches) for t in e.turns)
    if mode != "episode" and not rewarded:
        return Grade.failed("invalid_output", f"env.reward = {mode!r}: no turn_rewards given")
    if mode == "turns":
        return combined_grade(_all_turns(episode), None, mode)
    if episode.outcome is None:
        return Grade.failed("invalid_output", "agent: no reward (only turn_rewards)")
    return combined_grade(_all_turns(episode), to_grade(episode.outcome, "agent", 0.0), mode)


def _all_turns(episode: Episode) -> Episode:
    """The episode with its branches' turns too (their rewards count in the sum)."""
    turns = tuple(t for e in (episode, *episode.branches) for t in e.turns)
    return replace(episode, turns=turns)


def per_turn_rewards(
    episodes: Sequence[Sequence[Episode | None]],
    scores_P_G: torch.Tensor,
    valid_P_G: torch.Tensor,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, G, K) rewards per turn and their validity, for the per-turn estimators: each
    turn's environment reward (modes "turns", "sum"), and the rest of the episode's score on
    its last turn (so a row's turns sum to its score). A single-turn completion (None) is
    one turn."""
    turns = max((len(e.turns) if e else 1 for group in episodes for e in group), default=1)
    P, G = scores_P_G.shape
    rewards = torch.zeros((P, G, turns), dtype=torch.float64)
    valid = torch.zeros((P, G, turns), dtype=torch.bool)
    for p, group in enumerate(episodes):
        for g, episode in enumerate(group):
            if not valid_P_G[p, g]:
                continue
            count = len(episode.turns) if episode else 1
            counted = 0.0
            if episode is not None and mode != "episode":
                for k, turn in enumerate(episode.turns):
                    rewards[p, g, k] = turn.reward or 0.0
                    counted += turn.reward or 0.0
            rewards[p, g, count - 1] += float(scores_P_G[p, g]) - counted
            valid[p, g, :count] = True
    return rewards, valid


def cut(completion: Completion) -> bool:
    """An episode ended by a limit rather than by its environment."""
    return completion.episode is not None and completion.finish_reason in CUT_REASONS
