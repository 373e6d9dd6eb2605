"""A tiny verifiers (0.4) taskset for openrft's tests: sums the model answers with a tool.

`num_tasks` tasks "What is a + b?"; the task's toolset has calc_add; the reward is 1 when the
last reply holds the sum. With `tools = false` the tasks come without the toolset (for
models whose chat template has no tool calls)."""

import verifiers.v1 as vf

from tiny_vf.tools import AddToolset


class SumData(vf.TaskData):
    answer: str


class SumTaskConfig(vf.TaskConfig):
    tools: vf.ToolsetConfig = vf.ToolsetConfig()
    use_tools: bool = True


class SumTask(vf.Task[SumData, vf.State, SumTaskConfig]):
    @classmethod
    def toolsets(cls, config):
        return [AddToolset(config.tools)] if config.use_tools else []

    @vf.reward(weight=1.0)
    async def correct(self, trace: vf.Trace) -> float:
        return float(self.data.answer in (trace.last_reply or ""))

    @vf.metric
    async def reply_chars(self, trace: vf.Trace) -> float:
        return float(len(trace.last_reply or ""))


class SumConfig(vf.TasksetConfig):
    num_tasks: int = 2
    tools: bool = True
    task: SumTaskConfig = SumTaskConfig()


class SumTaskset(vf.Taskset[SumTask, SumConfig]):
    def load(self):
        task_config = self.config.task.model_copy(update={"use_tools": self.config.tools})
        for n in range(self.config.num_tasks):
            a, b = 20 + n, 22 + 3 * n
            hint = " Use the calc_add tool." if self.config.tools else ""
            yield SumTask(
                SumData(prompt=f"What is {a} + {b}?{hint}", answer=str(a + b)), task_config
            )


__all__ = ["SumTaskset"]
