"""Your reward function. `item` holds every field of the data row: id, messages (the
prompt), reference_answer and any other field. Return a float, or a dict of named
components (the score is their sum, or the "score" entry if you give one)."""


def reward(response: str, item: dict) -> dict[str, float]:
    reference = str(item.get("reference_answer", "")).strip().lower()
    correct = float(response.strip().lower() == reference)
    concise = 1.0 if len(response.split()) <= 5 else 0.0
    return {"score": correct + 0.1 * concise, "correct": correct, "concise": concise}
