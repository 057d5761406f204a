"""Training throughput: our train loop against a bare minimal loop, side by side in one run.

Both loops train the same architecture from the same initial weights on the same synthetic
images with the same batch size and the same number of loader workers:

* **ours**: :func:`training.engine.train_one_epoch` over the loader of ``detstack train``
  (:func:`training.train.make_train_loader`: seeded sampler, aspect-ratio grouping, flips),
  with its per-iteration LR schedule, non-finite-loss check and loss bookkeeping;
* **bare**: ``for images, targets in DataLoader(shuffle=True)``: forward, sum of losses,
  ``zero_grad``, ``backward``, ``step`` — the least a training loop can do.

The loops alternate (bare, ours, ours, bare, ...) for ``--repeats`` rounds so that load from
other processes on a shared machine hits both alike; each round times ``--steps`` steps after
``--warmup`` untimed ones. It prints a table and writes JSON with every round's images/s and
the ratio ours/bare (median over rounds).

Example:
    $ .venv/bin/python benchmarks/train_throughput.py --model quickstart --batch-size 4 \\
        --steps 20 --repeats 3 --json benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.coco import load_dataset  # noqa: E402
from training.dataset import DetectionDataset, collate_fn  # noqa: E402
from training.distributed import DistContext  # noqa: E402
from training.engine import train_one_epoch  # noqa: E402
from training.models import ModelConfig, build_model  # noqa: E402
from training.synth import SynthConfig, write_synthetic_dataset  # noqa: E402
from training.train import TrainConfig, lr_factor, make_train_loader  # noqa: E402
from training.transforms import training_transforms  # noqa: E402


@dataclass(frozen=True)
class Round:
    """One timed run of one loop."""

    loop: str
    round: int
    steps: int
    images: int
    seconds: float
    cpu_seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def images_per_cpu_second(self) -> float:
        return self.images / self.cpu_seconds


class _Limited:
    """The first ``warmup + steps`` batches of a loader; timing starts after the warmup."""

    def __init__(self, loader: Any, warmup: int, steps: int) -> None:
        self.loader, self.warmup, self.steps = loader, warmup, steps
        self.started = 0.0
        self.cpu_started = 0.0
        self.images = 0

    def __len__(self) -> int:
        return self.warmup + self.steps

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.warmup + self.steps:
                return
            if index == self.warmup:
                self.started = time.perf_counter()
                self.cpu_started = time.process_time()
            if index >= self.warmup:
                self.images += len(batch[0])
            yield batch


def _cycle(loader: Any):
    while True:
        yield from loader


def _ours(model, state, config, loader, warmup, steps) -> tuple[float, float, int]:
    model.load_state_dict(state)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, len(loader)))
    loader.batch_sampler.set_epoch(0)
    loader.generator.manual_seed(0)
    limited = _Limited(loader, warmup, steps)
    train_one_epoch(model, optimizer, scheduler, limited, torch.device("cpu"))
    return (
        time.perf_counter() - limited.started,
        time.process_time() - limited.cpu_started,
        limited.images,
    )


def _bare(model, state, config, dataset, warmup, steps) -> tuple[float, float, int]:
    model.load_state_dict(state)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
        collate_fn=collate_fn,
    )
    images = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for index, (batch_images, targets) in enumerate(_cycle(loader)):
        if index == warmup:
            started, cpu_started = time.perf_counter(), time.process_time()
        if index == warmup + steps:
            break
        loss = sum(model(batch_images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= warmup:
            images += len(batch_images)
    return time.perf_counter() - started, time.process_time() - cpu_started, images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="quickstart", choices=("quickstart", "tiny"))
    parser.add_argument("--dataset", default=None, help="COCO dataset (default: synthesize)")
    parser.add_argument("--images", type=int, default=96, help="synthetic images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=Path("train_throughput.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        source = args.dataset
        if source is None:
            source = str(Path(scratch) / "synth")
            write_synthetic_dataset(Path(source), SynthConfig(images=args.images, seed=0))
        coco = load_dataset(source)
        model_config = ModelConfig(args.model, weights="none", weights_backbone="none")
        config = TrainConfig(
            dataset=source,
            epochs=1000,  # no LR decay during the benchmark
            model=model_config,
            batch_size=args.batch_size,
            workers=args.workers,
            device="cpu",
        )
        context = DistContext(0, 0, 1, torch.device("cpu"), None)
        needed = (args.warmup + args.steps) * args.batch_size
        ids = coco.image_ids
        if len(ids) < needed:
            parser.error(f"{len(ids)} images < {needed} needed per round; raise --images")
        torch.manual_seed(0)
        model = build_model(model_config, coco.categories.num_classes)
        initial = copy.deepcopy(model.state_dict())
        ours_loader = make_train_loader(coco, ids, config, context)
        bare_set = DetectionDataset(coco, ids, training_transforms(config.flip_probability))

        rounds: list[Round] = []
        for index in range(args.repeats):
            order = ("bare", "ours") if index % 2 == 0 else ("ours", "bare")
            for loop in order:
                if loop == "ours":
                    seconds, cpu_seconds, images = _ours(
                        model, initial, config, ours_loader, args.warmup, args.steps
                    )
                else:
                    seconds, cpu_seconds, images = _bare(
                        model, initial, config, bare_set, args.warmup, args.steps
                    )
                rounds.append(Round(loop, index, args.steps, images, seconds, cpu_seconds))
                print(
                    f"round {index + 1} {loop:<4} {images / seconds:7.2f} images/s "
                    f"{images / cpu_seconds:7.2f} images/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )

    summary: dict[str, Any] = {
        "model": args.model,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "steps_per_round": args.steps,
        "warmup_steps_per_round": args.warmup,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "torch": torch.__version__,
        },
        "rounds": [
            {
                **asdict(r),
                "images_per_second": r.images_per_second,
                "images_per_cpu_second": r.images_per_cpu_second,
            }
            for r in rounds
        ],
    }
    print(f"\n{'loop':<6}{'measure':<16}{'median':>9}   rounds")
    for measure in ("images_per_second", "images_per_cpu_second"):
        per_loop = {
            loop: [getattr(r, measure) for r in rounds if r.loop == loop]
            for loop in ("bare", "ours")
        }
        ratios = [o / b for o, b in zip(per_loop["ours"], per_loop["bare"], strict=True)]
        for loop in ("bare", "ours"):
            values = " ".join(f"{v:7.2f}" for v in per_loop[loop])
            median = statistics.median(per_loop[loop])
            label = "img/s" if measure == "images_per_second" else "img/CPU-s"
            print(f"{loop:<6}{label:<16}{median:>9.2f}   {values}")
            summary[f"{loop}_{measure}_median"] = median
        summary[f"ratio_ours_over_bare_{measure}"] = ratios
        summary[f"ratio_ours_over_bare_{measure}_median"] = statistics.median(ratios)
        print(
            f"ratio ours/bare ({label}): median {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
