"""A tiny random-weight Llama model with a small byte-level BPE tokenizer and a ChatML
template, built on the spot: loop, checkpoint and resume tests run in seconds with it."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the movie was great and the acting was wonderful",
    "a dull and boring film with a weak plot",
    "positive negative answer label sentiment review",
    "what is 12 plus 30 ? the answer is 42 #### 42",
    "system user assistant you are a helpful assistant",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 aaaa bbbb cccc",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def make_tiny_model_dir(path: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """Write a tiny Llama (2 layers, 4 query and 2 key/value heads of `head_dim`; vLLM's CPU
    attention needs a head_dim of 32 or more) and its tokenizer to `path`."""
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4 * head_dim,
        intermediate_size=8 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# A Qwen2.5-style template with tools: the tool list in the system turn, calls as
# <tool_call>{json}</tool_call> (arguments | tojson, as Qwen2.5's template writes them), tool
# results grouped in a user turn as <tool_response>s.
CHATML_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}"
    "{%- endfor %}{{- '\\n</tools>\\nCall a tool as <tool_call>{json}</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    '{%- for call in message.tool_calls or [] %}{{- \'\\n<tool_call>\\n{"name": "\' }}'
    '{{- call.function.name + \'", "arguments": \' }}{{- call.function.arguments | tojson }}'
    "{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tool_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with the tool-calling template above."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TOOLS
    return tokenizer


def load_varied_tiny_model(model_dir: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The tiny model loaded as openrft loads models, its matrices redrawn with a larger
    spread (seed 0): replies vary in length and content instead of repeating one token."""
    from openrft.models.load import load_model

    model, tokenizer = load_model(str(model_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.3)
    return model.eval(), tokenizer
