"""The main job in one command: a COCO dataset to a served, benchmarked model version.

``detstack pipeline`` runs data check → train → evaluate → export (with its validation gate) →
serve (embedded Triton) → smoke prediction → benchmark → report, from one YAML configuration
(the built-in default is the offline quickstart), into one run folder. See
:mod:`detstack._pipeline_config` for the file and :mod:`detstack._pipeline_run` for the run
folder.

Example:
    >>> from detstack.pipeline import load_pipeline_config, run_pipeline
    >>> config = load_pipeline_config("pipeline.yaml", {"train.epochs": 3})   # doctest: +SKIP
    >>> result = run_pipeline(config)                                          # doctest: +SKIP
    >>> result.model_version, result.report_html                               # doctest: +SKIP
    (2, PosixPath('runs/20260101-120000/report.html'))
"""

from detstack._pipeline_config import (
    BenchSection,
    DatasetSection,
    PipelineConfig,
    PredictSection,
    config_to_yaml,
    default_config_text,
    load_pipeline_config,
    parse_override,
)
from detstack._pipeline_run import CONFIG_FILE_NAME, PipelineResult, run_pipeline

__all__ = [
    "CONFIG_FILE_NAME",
    "BenchSection",
    "DatasetSection",
    "PipelineConfig",
    "PipelineResult",
    "PredictSection",
    "config_to_yaml",
    "default_config_text",
    "load_pipeline_config",
    "parse_override",
    "run_pipeline",
]
