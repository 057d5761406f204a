"""The training stage: a COCO dataset (folder or S3) → a fine-tuned Faster R-CNN checkpoint.

The few names most callers need are re-exported here; everything else lives in the modules
(``training.coco``, ``training.dataset``, ``training.engine``, ``training.distributed`` ...).

Example:
    >>> from dataclasses import replace
    >>> from training import QUICKSTART, load_checkpoint, train
    >>> result = train(replace(QUICKSTART, dataset="data/shapes", output="runs/shapes"))
    ...                                                                   # doctest: +SKIP
    >>> load_checkpoint(result.best_checkpoint).metrics["AP50"]         # doctest: +SKIP
    0.93
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_run_files": ["METRICS_FILE"],
        "categories": ["CategoryMap"],
        "checkpoint": ["Checkpoint", "load_checkpoint", "save_checkpoint"],
        "coco": ["load_dataset"],
        "models": ["ModelConfig", "build_model"],
        "train": ["QUICKSTART", "TrainConfig", "TrainResult", "train"],
    },
)
