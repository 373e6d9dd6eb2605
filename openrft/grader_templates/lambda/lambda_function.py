"""A reward Lambda in Bedrock's contract: the event is a list of samples
{"id", "messages" (prompt + generated assistant turn), "metadata": {"reference_answer", ...}};
return one {"id", "aggregate_reward_score", "metrics_list"} per sample. The same file runs
on AWS Lambda for Bedrock, and locally with `openrft grader serve lambda_function.py`."""


def score(response: str, reference: str) -> tuple[float, list[dict]]:
    correct = float(response.strip().lower() == str(reference).strip().lower())
    concise = float(len(response.split()) <= 5)
    metrics = [
        {"name": "correct", "value": correct, "type": "Reward"},
        {"name": "concise", "value": concise, "type": "Metric"},
    ]
    return correct, metrics


def lambda_handler(event, context):
    results = []
    for sample in event:
        response = sample["messages"][-1]["content"]
        metadata = sample.get("metadata") or {}
        reference = metadata.get("reference_answer", sample.get("reference_answer", ""))
        value, metrics = score(response, reference)
        results.append(
            {"id": sample["id"], "aggregate_reward_score": value, "metrics_list": metrics}
        )
    return results
