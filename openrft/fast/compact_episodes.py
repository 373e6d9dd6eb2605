"""The compact decoder's multi-turn half: continuing every row's cache across an episode's
turns (openrft.rollout.hf_episodes). A row waiting for its environment is fed a filler whose
cache column is masked for it (`_block`), an environment's answer is appended to all rows in
one pass (`extend`, left-padded chunks, the padding masked), and the generated-token cache
grows when an episode outlives the room prefill gave it (`_ensure_room`). Mixed into
CompactDecoder; tests/rollout/test_hf_episodes.py checks it against a fresh forward of the
whole history."""

from __future__ import annotations

import torch


class EpisodeCache:
    """Methods of CompactDecoder (they use its weights, caches and attention)."""

    @torch.no_grad()
    def extend(
        self, tokens_B_K: torch.Tensor, real_B_K: torch.Tensor, positions_B_K: torch.Tensor
    ) -> torch.Tensor:
        """Append K tokens per row (left-padded; padding masked) in one pass: each attends to
        its prompt, the row's earlier columns and the chunk's tokens before it. Next-token
        logits after each row's last token."""
        batch, count = tokens_B_K.shape
        column = self.generated
        self._ensure_room(column + count)
        if not bool(real_B_K.all()):
            self._block(column, ~real_B_K)
        end = column + count
        # Query k of the chunk sees columns up to its own (column + k); the same for every
        # query head of a group, so the mask repeats per head: rows are (head g, token k).
        seen_K_T = torch.arange(end, device=self.device)[None, :] <= (
            column + torch.arange(count, device=self.device)[:, None]
        )
        causal_K_T = torch.zeros(count, end, dtype=self.attention_dtype, device=self.device)
        causal_K_T.masked_fill_(~seen_K_T, torch.finfo(self.attention_dtype).min)
        group = self.heads // self.kv_heads
        causal_GK_T = causal_K_T.repeat(group, 1)
        cos, sin = self._rotary(positions_B_K, self.attention_dtype)  # (B, 1, K, D)
        x_B_K_H = self.embed[tokens_B_K]
        for index, layer in enumerate(self.layers):
            q, k, v = self._project(layer, x_B_K_H, cos, sin)  # (B, heads, K, D)
            keys, values = self.generated_keys[index], self.generated_values[index]
            keys[column:end] = k.permute(2, 0, 1, 3)
            values[column:end] = v.permute(2, 0, 1, 3)
            q_B_KV_GK_D = q.reshape(batch, self.kv_heads, group * count, self.head_dim)
            attended = self._attend(
                q_B_KV_GK_D,
                index,
                keys[:end].permute(1, 2, 0, 3),
                values[:end].permute(1, 2, 0, 3),
                causal_GK_T,
            )
            attended_B_K_A = (
                attended.view(batch, self.kv_heads, group, count, self.head_dim)
                .permute(0, 3, 1, 2, 4)
                .reshape(batch, count, -1)
                .to(self.dtype)
            )
            x_B_K_H = self._finish_layer(layer, x_B_K_H, attended_B_K_A)
        self.generated = end
        return self._logits(x_B_K_H[:, -1])

    def _block(self, column: int, blocked_B_K: torch.Tensor) -> None:
        """Mask generated-cache columns column ... column + K for the rows marked."""
        if self.own_blocked_B_T is None:
            room = self.generated_keys[0].shape[0]
            rows = self.sequence_B.shape[0]
            self.own_blocked_B_T = self._empty(rows, room, attention=True).zero_()
        minimum = torch.finfo(self.attention_dtype).min
        width = blocked_B_K.shape[1]
        self.own_blocked_B_T[:, column : column + width].masked_fill_(blocked_B_K, minimum)

    def _ensure_room(self, columns: int) -> None:
        """Grow the generated-token cache (doubling) to hold `columns`: an episode's turns
        and environment messages outgrow the room prefill was given."""
        room = self.generated_keys[0].shape[0]
        if columns <= room:
            return
        new_room = max(columns, 2 * room)

        def grown(cache: torch.Tensor) -> torch.Tensor:
            bigger = cache.new_empty((new_room, *cache.shape[1:]))
            bigger[: self.generated] = cache[: self.generated]
            return bigger

        self.generated_keys = [grown(c) for c in self.generated_keys]
        self.generated_values = [grown(c) for c in self.generated_values]
        if self.own_blocked_B_T is not None:
            blocked = self.own_blocked_B_T.new_zeros((self.own_blocked_B_T.shape[0], new_room))
            blocked[:, :room] = self.own_blocked_B_T
            self.own_blocked_B_T = blocked
