"""What the pipeline's stages share: a fixed context in, a typed result out.

There is no shared blackboard. The runner (:mod:`pipeline._run`) builds one :class:`RunContext`
for the run, calls each stage with the context and the earlier stages' values it needs, and
records each :class:`StageResult`'s ``record`` in ``run.json``. A stage's signature therefore
says what it depends on, and a stage cannot read what an earlier one did not return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from pipeline._config import PipelineConfig

if TYPE_CHECKING:  # the runtime import would load tritonclient for every `detstack` call
    from serve import ApiToken

__all__ = ["CONFIG_FILE_NAME", "RunContext", "StageResult"]

#: The file name of the configuration saved in the run folder and in the model version.
CONFIG_FILE_NAME = "pipeline.yaml"

T = TypeVar("T")


@dataclass(frozen=True)
class RunContext:
    """What every stage may read; fixed for the whole run."""

    config: PipelineConfig
    run_dir: Path
    token: ApiToken = field(repr=False)  # never written anywhere
    progress: bool = False

    @property
    def config_file(self) -> Path:
        """The effective configuration saved in the run folder."""
        return self.run_dir / CONFIG_FILE_NAME


@dataclass(frozen=True)
class StageResult(Generic[T]):
    """One stage's outcome.

    Attributes:
        value: what later stages receive (a dataset, a checkpoint path, a server ...).
        note: one line for the stage table of the report.
        record: top-level ``run.json`` entries this stage adds; a mapping merges one level
            deep into an entry an earlier stage wrote (``evaluate`` adds ``training.metrics``).
    """

    value: T
    note: str
    record: Mapping[str, object] = field(default_factory=dict)
