"""The calculator task of recipes/calculator-tools-qwen.toml as a verifiers (0.4) taskset:
what a verifiers user would write, trained unchanged by openrft (env.verifiers =
"builtin:arithmetic_calculator", docs/verifiers.md). Nothing here imports openrft.

Its tasks are rows of a JSONL file in openrft's (and Bedrock's) row format: `messages` (the
worked example and the question) and `reference_answer`; `data_file` names it (openrft
resolves "builtin:arithmetic/train" to its own copy). The tools are a Toolset of its own
(tools.py): one MCP server for the whole taskset. The reward is 1 when the last reply's
'#### <n>' line is the answer; a metric counts the tool calls.
"""

import json
import re

import verifiers.v1 as vf

from arithmetic_calculator.tools import Calculator

ANSWER = re.compile(r"####\s*(-?[\d,]+)")


class ArithmeticData(vf.TaskData):
    answer: str


class ArithmeticTask(vf.Task[ArithmeticData, vf.State, vf.TaskConfig]):
    @vf.reward(weight=1.0)
    async def correct(self, trace: vf.Trace) -> float:
        found = ANSWER.search(trace.last_reply or "")
        return float(found is not None and found.group(1).replace(",", "") == self.data.answer)

    @vf.metric
    async def tool_calls(self, trace: vf.Trace) -> float:
        # The model's own replies (the worked example's calls in the prompt do not count).
        return float(sum(len(reply.tool_calls or ()) for reply in trace.assistant_messages))


class ArithmeticConfig(vf.TasksetConfig):
    data_file: str = ""  # JSONL rows: messages (ending with the user's question), reference_answer
    num_tasks: int = 0  # 0 = every row
    tools: vf.ToolsetConfig = vf.ToolsetConfig()
    task: vf.TaskConfig = vf.TaskConfig()


class ArithmeticTaskset(vf.Taskset[ArithmeticTask, ArithmeticConfig]):
    @classmethod
    def toolsets(cls, config):
        # One calculator server for every episode (it keeps no state): a server per episode
        # would be a Python process of 220 MB for each of a step's 64 episodes.
        return [Calculator(config.tools)]

    def load(self):
        with open(self.config.data_file) as rows:
            for number, line in enumerate(rows):
                if self.config.num_tasks and number >= self.config.num_tasks:
                    break
                row = json.loads(line)
                yield ArithmeticTask(
                    ArithmeticData(
                        id=row.get("id"),
                        prompt=[_message(m) for m in row["messages"]],
                        answer=str(row["reference_answer"]),
                    ),
                    self.config.task,
                )


def _message(message):
    """An OpenAI chat message in verifiers' shape: a tool call is {id, name, arguments}."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    flat = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in calls
    ]
    return {**message, "tool_calls": flat}


__all__ = ["ArithmeticTaskset"]
