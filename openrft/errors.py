"""The error tree: every failure a user can cause has a class here and a message naming its cause.

RFTError
  ConfigError      a config field is unknown, mistyped or out of range (names the field)
  DatasetError     rows failed validation (names file, line and field for each)
  ModelError       a model could not be found, verified or loaded
  GraderError      a grader could not be built (bad reference, import error); per-sample
                   failures are `types.GradeError` values, not exceptions
  RolloutError     generation failed
    WeightSyncError  a sampling copy (vLLM, the compact decoder, a bf16 copy) does not hold
                     the trainer's weights after a sync
  CheckpointError  a checkpoint is missing, partial or from another config
  RunFileError     a run's log could not be written (a full disk) or read back
"""

from __future__ import annotations

from dataclasses import dataclass


class RFTError(Exception):
    """Base of every error openrft raises on purpose."""


class ConfigError(RFTError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


@dataclass(frozen=True)
class RowError:
    """One problem in one dataset row."""

    file: str
    line: int  # 1-based line number in the file
    field: str  # the offending field, e.g. "messages[1].role"; "" for the whole line
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class DatasetError(RFTError):
    def __init__(self, errors: list[RowError], limit: int = 20):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:limit])
        more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
        super().__init__(f"{len(errors)} invalid row(s):\n{shown}{more}")


class ModelError(RFTError):
    pass


class GraderError(RFTError):
    pass


class RolloutError(RFTError):
    pass


class WeightSyncError(RolloutError):
    """A sampling copy of the weights does not compute the trainer's model after a sync."""


class RunFileError(RFTError):
    pass


class CheckpointError(RFTError):
    pass


class NoLearningSignal(RFTError):
    """The Step-0 baseline found no prompt whose samples score differently (eval.require_signal)."""
