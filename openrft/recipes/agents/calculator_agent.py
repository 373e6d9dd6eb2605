"""The calculator episode of recipes/calculator-tools-qwen.toml written as an agent would be:
its own tool loop against an OpenAI client, its own tools, its own reward (env.agent =
"builtin:calculator_agent"). Nothing here imports openrft: the same function runs against
OpenAI's API or any OpenAI-compatible server.
"""

import json
import re

ANSWER = re.compile(r"####\s*(-?[\d,]+)")
TOOLS = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
}


def call_tool(name, arguments):
    """A tool's answer, or the error a real API would give back."""
    try:
        return str(TOOLS[name](**json.loads(arguments)))
    except KeyError:
        return f"error: no tool named {name!r}"
    except (TypeError, ValueError) as error:
        return f"error: bad arguments for {name}: {error}"


async def run(client, item):
    messages = list(item["messages"])
    calls = 0
    content = ""
    for _ in range(4):  # assistant turns
        reply = await client.chat.completions.create(
            model="policy", messages=messages, tools=item["tools"], max_tokens=96
        )
        message = reply.choices[0].message
        content = message.content or ""
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            calls += 1
            result = call_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    found = ANSWER.search(content)
    right = found is not None and found.group(1).replace(",", "") == item["reference_answer"]
    return {"score": float(right), "tool_calls": float(calls)}
