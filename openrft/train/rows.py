"""From graded groups to the rows the update trains on: training rewards, advantages, rows.

- Training rewards: a sample's grade, or `reward.error_score` for a failed grading (without
  it the sample is invalid: left out of every mean and of the update, never a silent 0), plus
  DAPO's soft overlong penalty (`algo.overlong_buffer`). Validity is a mask, never a NaN.
- Advantages: the estimator `algo.advantage` names (openrft.algo.registry), per episode
  (P, G) or per turn (P, G, K; a single-turn completion is one turn).
- Rows: one `TrainRow` per valid sample (completions that hit the token cap left out with
  `algo.mask_truncated`), each sampled segment's tokens carrying its advantage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.algo import ADVANTAGE_ESTIMATORS, flat_groups, lookup, overlong_penalty
from openrft.config import AlgoConfig, EnvConfig
from openrft.train.episodes import cut, per_turn_rewards
from openrft.types import RolloutGroup, Segment, TrainRow


@dataclass(frozen=True)
class TrainingRewards:
    """What the advantages are computed from, per prompt and sample."""

    rewards_P_G: torch.Tensor  # float64: score (or error_score) plus penalty; 0 where invalid
    valid_P_G: torch.Tensor  # bool: graded, or given reward.error_score
    penalty_P_G: torch.Tensor  # float64 <= 0: the overlong penalty included in rewards_P_G
    shaped: bool = False  # the overlong penalty is on (algo.overlong_buffer > 0)


@dataclass(frozen=True)
class Advantages:
    rewards: TrainingRewards
    advantages_P_G_K: torch.Tensor  # per sample and turn; K = 1 for single-turn groups

    def of_group(self, p: int) -> list[float | None]:
        """Group p's first-turn advantages for the rollout log (None where invalid)."""
        values = self.advantages_P_G_K[p, :, 0].tolist()
        valid = self.rewards.valid_P_G[p].tolist()
        return [v if ok else None for v, ok in zip(values, valid, strict=True)]


def training_rewards(
    groups: Sequence[RolloutGroup],
    algo: AlgoConfig,
    error_score: float | None,
    max_new_tokens: int,
    cut_penalty: float = 0.0,
) -> TrainingRewards:
    """Scores plus shaping: DAPO's overlong penalty (single-turn), `env.cut_penalty` off an
    episode cut by a limit."""
    scores, valid, lengths, cuts = [], [], [], []
    for group in groups:
        for grade, completion in zip(group.grades, group.completions, strict=True):
            graded = grade.error is None and grade.score is not None
            score = grade.score if graded else error_score
            valid.append(score is not None)
            scores.append(float(score) if score is not None else 0.0)
            lengths.append(len(completion.token_ids))
            cuts.append(cut(completion))
    shape = (len(groups), len(groups[0].grades) if groups else 0)
    valid_P_G = torch.tensor(valid, dtype=torch.bool).reshape(shape)
    penalty_P_G = overlong_penalty(
        torch.tensor(lengths), max_new_tokens, algo.overlong_buffer, algo.overlong_penalty
    ).reshape(shape)
    penalty_P_G = penalty_P_G - cut_penalty * torch.tensor(cuts, dtype=torch.float64).reshape(shape)
    penalty_P_G = torch.where(valid_P_G, penalty_P_G, torch.zeros_like(penalty_P_G))
    rewards_P_G = torch.tensor(scores, dtype=torch.float64).reshape(shape) + penalty_P_G
    shaped = algo.overlong_buffer > 0 or cut_penalty > 0
    return TrainingRewards(rewards_P_G, valid_P_G, penalty_P_G, shaped)


def no_signal(
    groups: Sequence[RolloutGroup],
    algo: AlgoConfig,
    error_score: float | None,
    max_tokens: int,
    cut_penalty: float = 0.0,
) -> list[bool]:
    """Which groups' grades are all equal (or have fewer than two valid): dynamic sampling
    drops them. As DAPO does, the grades decide, not the shaped reward: a group whose
    answers are all wrong is dropped even when the overlong penalty tells its lengths apart
    (it teaches "shorter", not "right")."""
    if not groups:
        return []
    rewards = training_rewards(groups, algo, error_score, max_tokens, cut_penalty)
    graded_P_G = rewards.rewards_P_G - rewards.penalty_P_G
    return flat_groups(graded_P_G, rewards.valid_P_G).tolist()


def compute_advantages(
    groups: Sequence[RolloutGroup],
    algo: AlgoConfig,
    error_score: float | None,
    max_new_tokens: int,
    env: EnvConfig | None = None,
) -> Advantages:
    """Advantages of every sample (and turn) by the estimator `algo.advantage`."""
    estimator = lookup(ADVANTAGE_ESTIMATORS, algo.advantage, "advantage estimator")
    cut_penalty = env.cut_penalty if env is not None else 0.0
    rewards = training_rewards(groups, algo, error_score, max_new_tokens, cut_penalty)
    if not groups:  # dynamic sampling kept none: nothing to train on this step
        return Advantages(rewards, torch.zeros((0, 0, 1), dtype=torch.float64))
    if estimator.per_turn:
        # Each turn's reward (a single-turn completion is one turn rewarded by its grade).
        episodes = [[c.episode for c in group.completions] for group in groups]
        mode = env.reward if env is not None else "episode"
        per_turn = estimator.fn(
            *per_turn_rewards(episodes, rewards.rewards_P_G, rewards.valid_P_G, mode)
        )
    else:
        per_turn = estimator.fn(rewards.rewards_P_G, rewards.valid_P_G)[..., None]
    return Advantages(rewards, per_turn)


def training_rows(
    groups: Sequence[RolloutGroup],
    advantages: Advantages,
    mask_truncated: bool,
    mask_cut: bool = False,
) -> list[TrainRow]:
    """One row per valid sample with tokens, each sampled segment's tokens with its turn's
    advantage (the episode's, for a per-episode estimator). Left out: completions that hit
    the token cap (`mask_truncated`), episodes cut by a limit (`mask_cut`)."""
    rows = []
    valid_P_G = advantages.rewards.valid_P_G
    per_turn = advantages.advantages_P_G_K.shape[-1] > 1
    for p, group in enumerate(groups):
        for g, completion in enumerate(group.completions):
            if not valid_P_G[p, g] or not completion.token_ids:
                continue
            if mask_truncated and completion.finish_reason == "length":
                continue
            if mask_cut and cut(completion):
                continue
            turn_advantages = advantages.advantages_P_G_K[p, g].tolist()
            if completion.episode is None:
                segments: tuple[Segment, ...] = (
                    Segment(completion.token_ids, sampled=True, logprobs=completion.logprobs),
                )
                by_segment = [turn_advantages[0]]
            else:
                segments = completion.episode.segments()
                by_segment, turn = [], 0
                for segment in segments:  # environment segments take no advantage
                    by_segment.append(turn_advantages[turn if per_turn else 0])
                    turn += segment.sampled
            prompt = group.prompt_token_ids
            if completion.episode is not None:  # its environment's reset may have changed it
                prompt = completion.episode.prompt_token_ids
            rows.append(
                TrainRow.from_segments(prompt, segments, tuple(by_segment), group.policy_version)
            )
            # An agent's calls that did not extend the episode's tokens: rows of their own,
            # with the episode's advantage.
            for branch in completion.episode.branches if completion.episode else ():
                parts = branch.segments()
                rows.append(
                    TrainRow.from_segments(
                        branch.prompt_token_ids,
                        parts,
                        (turn_advantages[0],) * len(parts),
                        group.policy_version,
                    )
                )
    return rows
