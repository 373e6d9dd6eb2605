"""A run's usage totals from its step records, by hand."""

from openrft.metrics.usage import usage_totals


def test_totals_sum_each_step_once_the_last_line_winning():
    records = [
        {"step": 0, "val/reward/mean": 0.5},  # validation only: no usage
        {"step": 1, "usage/sampled_tokens": 10, "usage/tool_calls": 2},
        {"step": 2, "usage/sampled_tokens": 7, "usage/tool_calls": 0},
        {"step": 2, "usage/sampled_tokens": 5, "usage/tool_calls": 1},  # rewritten on resume
        {"step": 3, "loss/total": 0.1},  # a line without usage does not replace anything
    ]
    assert usage_totals(records) == {"sampled_tokens": 15, "tool_calls": 3}


def test_no_steps_no_usage():
    assert usage_totals([]) == {}
