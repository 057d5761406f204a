"""The main job in one command: a COCO dataset to a served, benchmarked model version.

``detstack pipeline`` runs data check → train → evaluate → export (with its validation gate) →
serve (embedded Triton) → smoke prediction → benchmark → report, from one YAML configuration
(the built-in default is the offline quickstart), into one run folder. See
:mod:`pipeline._config` for the file and :mod:`pipeline._run` for the run
folder.

Example:
    >>> from pipeline import load_pipeline_config, run_pipeline
    >>> config = load_pipeline_config("pipeline.yaml", {"train.epochs": 3})   # doctest: +SKIP
    >>> result = run_pipeline(config)                                          # doctest: +SKIP
    >>> result.model_version, result.report_html                               # doctest: +SKIP
    (2, PosixPath('runs/20260101-120000/report.html'))
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_config": [
            "BenchSection",
            "DatasetSection",
            "PipelineConfig",
            "PredictSection",
            "config_to_yaml",
            "default_config_text",
            "load_pipeline_config",
            "parse_override",
        ],
        "_run": ["PipelineResult", "run_pipeline"],
        "_state": ["CONFIG_FILE_NAME"],
    },
)
