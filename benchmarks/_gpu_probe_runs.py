"""The GPU probe's whole-program checks and its record of conditions.

* :func:`run_train_loop`: one short run of our own ``training.train`` (AMP on CUDA) on a
  synthetic COCO dataset, ending in a checkpoint and, where pycocotools is installed, a COCO
  evaluation (the H200 machine has no pycocotools: then the run trains without a validation
  split and the evaluation is recorded as skipped, with that reason).
* :func:`run_gpu_tests`: the project's ``gpu``-marked tests, run by pytest in a subprocess.
* :func:`conditions`: versions, device, driver, CPUs, memory; never the host name.
* :func:`ensure_tqdm`: the training code draws progress bars with tqdm, which the H200 machine
  may lack; a pass-through stand-in (no bars) is put on ``sys.path`` then, and recorded.

Used by ``benchmarks/gpu_probe.py``; see its docstring for the command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import torch
from _gpu_probe_measure import ProbeSettings, failure

from detstack.versions import library_versions

_OUTPUT_TAIL_CHARS = 3000
_PACKAGES = (
    "numpy", "pandas", "Pillow", "onnx", "onnxruntime", "onnxruntime-gpu", "pycocotools",
    "tqdm", "PyYAML", "pytest", "boto3", "matplotlib", "tritonclient",
)  # fmt: skip
_TQDM_STAND_IN = '''"""Pass-through tqdm of benchmarks/gpu_probe.py (tqdm is missing): no bars."""


class tqdm:
    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass
'''


def ensure_tqdm(work_dir: Path) -> Path | None:
    """Make ``import tqdm`` work; returns the stand-in's folder when one had to be written."""
    if importlib.util.find_spec("tqdm") is not None:
        return None
    package = work_dir / "stand_ins" / "tqdm"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(_TQDM_STAND_IN, encoding="utf-8")
    (package / "auto.py").write_text("from tqdm import tqdm  # noqa: F401\n", encoding="utf-8")
    sys.path.insert(0, str(package.parent))
    return package.parent


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _nvidia_smi() -> dict[str, Any]:
    fields = "driver_version,name,memory.total,power.limit,clocks.max.sm"
    command = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return {"nvidia_smi": f"unavailable: {failure(error)}"}
    names = ("driver", "smi_name", "smi_memory", "power_limit", "max_sm_clock")
    values = [v.strip() for v in done.stdout.splitlines()[0].split(",")]
    if len(values) != len(names):
        return {"nvidia_smi": done.stdout.strip()[:300]}
    return dict(zip(names, values, strict=True))


def _cuda_driver_api() -> int | None:
    """``cuDriverGetVersion`` (e.g. 12080 = CUDA 12.8), straight from libcuda."""
    import ctypes

    try:
        library = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if library.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return version.value
    except OSError:
        pass
    return None


def conditions(device_name: str, stand_ins: dict[str, str]) -> dict[str, Any]:
    """Everything a figure depends on, without the host name."""
    import torchvision

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    installed = library_versions(_PACKAGES)
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        # None marks a package that is not installed (pycocotools on a bare GPU machine).
        "packages": {name: installed.get(name) for name in _PACKAGES},
        "stand_ins": stand_ins,
    }
    device = torch.device(device_name)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found["device"] = {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cuda_driver_api": _cuda_driver_api(),
            **_nvidia_smi(),
        }
    else:
        found["device"] = {"name": device.type, "model": _cpu_model()}
    return found


def run_train_loop(settings: ProbeSettings, deadline: float, work_dir: Path) -> dict[str, Any]:
    """Train with ``training.train`` (AMP on CUDA), then read back the checkpoint it wrote."""
    from training.checkpoint import load_checkpoint
    from training.models import ModelConfig
    from training.synth import SynthConfig, write_synthetic_dataset
    from training.train import TrainConfig, train

    amp = torch.device(settings.device).type == "cuda"
    coco = importlib.util.find_spec("pycocotools") is not None
    root = work_dir / "shapes"
    size = settings.loop_image_size
    write_synthetic_dataset(root, SynthConfig(images=settings.loop_images, size=size, seed=0))
    model = ModelConfig(
        architecture=settings.architecture,
        weights="none",
        weights_backbone="none",
        min_size=size,
        max_size=size,
    )
    config = TrainConfig(
        dataset=str(root),
        epochs=settings.loop_epochs,
        model=model,
        output=str(work_dir / "run"),
        batch_size=settings.loop_batch,
        lr=0.005,
        warmup_iters=10,
        # Without pycocotools train() cannot score a validation split: train on all images.
        val_fraction=0.25 if coco else 0.0,
        workers=settings.loop_workers,
        amp=amp,
        device=settings.device,
        seed=0,
    )
    started = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - started
    checkpoint = load_checkpoint(result.last_checkpoint)
    epochs = [
        {
            "epoch": record["epoch"],
            "loss": round(record["train"]["loss"], 4),
            "train_seconds": record["train_seconds"],
            **{k: round(record["val"][k], 4) for k in ("AP", "AP50") if k in record.get("val", {})},
        }
        for record in result.history
    ]
    scaler = checkpoint.scaler_state or {}
    record: dict[str, Any] = {
        "status": "ok",
        "amp": amp,
        "architecture": settings.architecture,
        "images": settings.loop_images,
        "image_size": size,
        "batch": settings.loop_batch,
        "seconds": round(seconds, 2),
        "epochs": epochs,
        "checkpoint": {
            "file": result.last_checkpoint.name,
            "bytes": result.last_checkpoint.stat().st_size,
            "epoch": checkpoint.epoch,
            "scaler_scale": scaler.get("scale"),
        },
        "coco_eval": "ok" if coco else "skipped: pycocotools not installed",
        "note": "weights from scratch for a few steps: AP near 0 is expected; this proves "
        "the path (AMP steps, checkpoint, evaluation), not accuracy",
    }
    if not amp:
        record["amp_note"] = "AMP off: train() accepts --amp only on CUDA"
    if time.monotonic() > deadline:
        record["over_budget_s"] = round(time.monotonic() - deadline, 1)
    return record


def _junit(path: Path) -> dict[str, Any]:
    root = ElementTree.parse(path).getroot()  # noqa: S314 - pytest's own report, just written
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    cases = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = kind, (found.get("message") or "")[:300]
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                **({"message": message} if message else {}),
            }
        )
    totals = {k: int(suite.get(k) or 0) for k in ("tests", "failures", "errors", "skipped")}
    return {"totals": totals, "tests": cases}


def _summary_line(output: str) -> str | None:
    pattern = re.compile(r"\b(passed|failed|skipped|deselected|errors?|no tests ran)\b")
    for line in reversed(output.splitlines()):
        if pattern.search(line):
            return line.strip(" =")
    return None


def gpu_test_files(repo: Path) -> list[str]:
    """Test files that mention ``mark.gpu``: collecting only these keeps other stages' imports
    (tritonclient, boto3, playwright ...) out of a machine that does not have them."""
    return sorted(
        str(path.relative_to(repo))
        for path in (repo / "tests").rglob("test_*.py")
        if "mark.gpu" in path.read_text(encoding="utf-8", errors="replace")
    )


def run_gpu_tests(repo: Path, deadline: float, work_dir: Path, extra_path: list[str]) -> dict:
    """``pytest -m gpu`` over :func:`gpu_test_files`; the outcome of each test and the summary."""
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest not installed"}
    files = gpu_test_files(repo)
    if not files:
        return {"status": "skipped", "reason": "no gpu-marked tests found under tests/"}
    junit = work_dir / "gpu-tests.xml"
    command = [
        sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={junit}", *files,
    ]  # fmt: skip
    paths = [str(repo), *extra_path, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    timeout = max(5.0, deadline - time.monotonic())
    shown = [part for part in command[3:] if not part.startswith("--junitxml")]
    record: dict[str, Any] = {"files": files, "command": " ".join(["pytest", *shown])}
    started = time.monotonic()
    returncode, stdout, stderr = run_bounded(command, timeout, cwd=repo, env=env)
    output = stdout + stderr
    record.update(
        status="ok",
        returncode=returncode,
        seconds=round(time.monotonic() - started, 2),
        summary=_summary_line(stdout),
        output_tail=output[-_OUTPUT_TAIL_CHARS:],
    )
    if junit.is_file():
        record.update(_junit(junit))
    if returncode is None:
        record.update(status="failed", reason=f"timed out after {timeout:.0f} s")
    elif returncode not in (0, 5):
        # 0: all passed; 5: nothing collected (all deselected): outcomes, not probe failures.
        record.update(status="failed", reason=f"pytest exit {returncode}: {record['summary']}")
    return record


def run_bounded(command: list[str], timeout: float, **popen: Any) -> tuple[int | None, str, str]:
    """Run ``command`` for at most ``timeout`` s; ``None`` as exit code when it was killed.

    The child runs in its own session so that a timeout also ends what it started
    (DataLoader workers, compile workers), by that session's id.
    """
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout or "", stderr or ""
