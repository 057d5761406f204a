"""The GPU flavour's decode-on-GPU ensemble (``export --gpu-decode``): configs and sibling models.

With ``ConfigOptions.gpu_decode`` the GPU flavour of ``<name>`` (``config.pbtxt``,
``configs/gpu.pbtxt``) is an ensemble that takes the image *file* and runs three sibling models
of the same repository, each written here with Triton's ``model_config_pb2``:

``<name>-gate``      python backend, ``KIND_CPU``: ``image_bytes`` (raw or base64 text, told
                     apart by :mod:`detstack.wire`, vendored next to its ``model.py``) ->
                     ``image_file`` UINT8 ``[1, n]``; refuses bad payloads, non-allowed
                     formats and oversized files with ``INVALID_ARG`` (:mod:`export.
                     triton_gate_model`). Stdlib and numpy only: NVIDIA's container has no
                     Pillow and no detstack.
``<name>-decode``    DALI backend, ``KIND_GPU``: ``image_file`` -> ``image`` UINT8
                     ``[1, 3, H, W]`` (:mod:`export.dali_pipeline`, copied as ``dali.py`` and
                     serialized by the backend at load time; nvJPEG for JPEG, DALI's CPU
                     decoders for PNG, BMP, TIFF and WebP).
``<name>-detector``  onnxruntime backend, ``KIND_GPU``, the GPU flavour's settings; takes
                     ``image`` ``[1, 3, H, W]`` and reshapes it to the graph's ``[3, H, W]``.
                     Its ``model.onnx`` is a hard link to ``<name>/<v>/model.onnx``; it warms
                     up with ``<name>``'s latest samples (links in its own ``warmup/``).

DALI's models with ``max_batch_size: 0`` read their tensors' first dimension as DALI's batch,
so the file and the decoded image carry a leading 1 (:data:`detstack.contract.IMAGE_FILE`,
:data:`detstack.contract.BATCHED_IMAGE`); Triton validates the detector's reshape
(``[1, 3, -1, -1]`` to ``[3, -1, -1]``: the same element count between variable dimensions).

Every sibling carries ``parameters[GPU_DECODE_PART_PARAMETER] = <name>`` and only the GPU
flavour (``config.pbtxt`` = ``configs/gpu.pbtxt``; the DALI backend reads ``max_batch_size``
from ``config.pbtxt`` itself, whatever ``--model-config-name`` says), so ``detstack serve``
(embedded) leaves them out. Their version directories mirror ``<name>``'s versions, so
``version_policy: latest 1`` serves the same version in every step.

:class:`GpuDecodeSiblings` writes them from :func:`export.repository.write_version`'s config
step with the repository's guarantees: a new sibling appears whole (one ``rename`` of a folder
staged inside ``<name>/``, which Triton ignores), a new version of a sibling likewise, configs
are replaced atomically, nothing is overwritten, and a failure takes back what was added.

Example:
    >>> siblings = GpuDecodeSiblings(Path("model_repository"), "my-detection-model",
    ...                              staging_prefix=".export-")          # doctest: +SKIP
    >>> siblings.write(versions=[1, 2], label_maps=maps, options=ConfigOptions(gpu_decode=True))
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detstack import errors as _errors_module
from detstack import wire as _wire_module
from detstack.atomic import atomic_write_bytes, fsync_directory, remove_leftovers
from detstack.contract import (
    BATCHED_IMAGE,
    GPU_DECODE_PART_PARAMETER,
    IMAGE,
    IMAGE_BYTES,
    IMAGE_FILE,
    LABEL_MAP_PARAMETER,
    OUTPUTS,
    PIXELS_MODEL_PARAMETER,
    TensorSpec,
    gpu_decode_model_names,
)
from detstack.errors import RepositoryError
from export.triton_config import (
    ConfigOptions,
    WarmupSample,
    label_map_json,
    parse_pbtxt,
    set_gpu_onnxruntime,
    to_pbtxt,
)

__all__ = [
    "GPU_DECODE_FORMATS",
    "GpuDecodeSiblings",
    "build_decode_config",
    "build_detector_config",
    "build_ensemble_config",
    "build_gate_config",
    "config_text",
    "sibling_configs",
]

logger = logging.getLogger(__name__)

#: Formats the gate lets through: those of detstack's allow-list that DALI's decoder reads
#: (DALI 2.4: JPEG, JPEG 2000, TIFF, PNG, BMP, PNM, WebP; it has no GIF decoder).
GPU_DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

GATE_SOURCE = Path(__file__).with_name("triton_gate_model.py")
PIPELINE_SOURCE = Path(__file__).with_name("dali_pipeline.py")
#: The detstack modules the gate's model.py imports (wire, and the errors wire raises), copied
#: into ``<v>/detstack/`` verbatim: the same rules as the client's and the embedded server's.
VENDORED_MODULES: tuple[Path, ...] = (Path(_wire_module.__file__), Path(_errors_module.__file__))
_VENDORED_INIT = (
    b'"""A copy of the detstack modules the gate needs (written by detstack export)."""\n'
)
#: The ensemble's tensor between decode and detector.
_DECODED = "decoded_image"


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _add_tensor(pb: Any, field: Any, spec: TensorSpec) -> Any:
    return field.add(
        name=spec.name, data_type=pb.DataType.Value(spec.config_type), dims=list(spec.shape)
    )


def _sibling(pb: Any, model: str, part_of: str, backend: str) -> Any:
    config = pb.ModelConfig(name=model, backend=backend, max_batch_size=0)
    config.version_policy.latest.num_versions = 1
    config.parameters[GPU_DECODE_PART_PARAMETER].string_value = part_of
    return config


def build_ensemble_config(
    *, name: str, label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]], options: ConfigOptions
) -> Any:
    """``<name>``'s GPU flavour: gate -> decode -> detector, ``image_bytes`` in, detections out."""
    del options  # the steps carry the settings; the ensemble only routes tensors
    pb = _pb()
    gate, decode, detector = gpu_decode_model_names(name)
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    config.version_policy.latest.num_versions = 1
    _add_tensor(pb, config.input, IMAGE_BYTES)
    for spec in OUTPUTS:
        _add_tensor(pb, config.output, spec)
    config.parameters[LABEL_MAP_PARAMETER].string_value = label_map_json(label_maps)
    config.parameters[PIXELS_MODEL_PARAMETER].string_value = detector
    steps = config.ensemble_scheduling.step
    first = steps.add(model_name=gate, model_version=-1)
    first.input_map[IMAGE_BYTES.name] = IMAGE_BYTES.name
    first.output_map[IMAGE_FILE.name] = IMAGE_FILE.name
    second = steps.add(model_name=decode, model_version=-1)
    second.input_map[IMAGE_FILE.name] = IMAGE_FILE.name
    second.output_map[BATCHED_IMAGE.name] = _DECODED
    third = steps.add(model_name=detector, model_version=-1)
    third.input_map[BATCHED_IMAGE.name] = _DECODED
    for spec in OUTPUTS:
        third.output_map[spec.name] = spec.name
    return config


def build_gate_config(*, name: str, options: ConfigOptions) -> Any:
    """``<name>-gate``: python backend on the CPU, the checks that need no decoding."""
    pb = _pb()
    config = _sibling(pb, gpu_decode_model_names(name)[0], name, "python")
    _add_tensor(pb, config.input, IMAGE_BYTES)
    _add_tensor(pb, config.output, IMAGE_FILE)
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=options.cpu_instances)
    config.parameters["max_file_bytes"].string_value = str(options.max_file_bytes)
    config.parameters["allowed_formats"].string_value = ",".join(GPU_DECODE_FORMATS)
    return config


def build_decode_config(*, name: str, options: ConfigOptions) -> Any:
    """``<name>-decode``: the DALI backend on the GPU (``<v>/dali.py``, autoserialized)."""
    pb = _pb()
    config = _sibling(pb, gpu_decode_model_names(name)[1], name, "dali")
    _add_tensor(pb, config.input, IMAGE_FILE)
    _add_tensor(pb, config.output, BATCHED_IMAGE)
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU, count=options.gpu_instances)
    return config


def build_detector_config(
    *,
    name: str,
    label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]],
    options: ConfigOptions,
    warmup: Sequence[WarmupSample] = (),
) -> Any:
    """``<name>-detector``: the graph on onnxruntime/GPU, taking DALI's ``[1, 3, H, W]``.

    ``warmup`` replays ``<name>``'s samples (raw CHW files, linked into the detector's own
    ``warmup/``) at load time, as the pixel GPU flavour does: cuDNN (and TensorRT, whose engine
    builds take long) meet their first shapes before a user's request does.
    """
    pb = _pb()
    config = _sibling(pb, gpu_decode_model_names(name)[2], name, "onnxruntime")
    image = _add_tensor(pb, config.input, BATCHED_IMAGE)
    image.reshape.shape.extend(list(IMAGE.shape))
    for spec in OUTPUTS:
        _add_tensor(pb, config.output, spec)
    # Pixel clients call the detector directly: it names the categories too.
    config.parameters[LABEL_MAP_PARAMETER].string_value = label_map_json(label_maps)
    set_gpu_onnxruntime(config, options)
    for sample in warmup:
        entry = config.model_warmup.add(name=sample.name, batch_size=1)
        tensor = entry.inputs[BATCHED_IMAGE.name]
        tensor.data_type = pb.DataType.Value(BATCHED_IMAGE.config_type)
        tensor.dims.extend([1, 3, sample.height, sample.width])
        tensor.input_data_file = sample.file_name
    return config


def sibling_configs(
    name: str,
    label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]],
    options: ConfigOptions,
    warmup: Sequence[WarmupSample] = (),
) -> dict[str, Any]:
    """``{sibling model name: ModelConfig}`` of ``name``'s three siblings, in ensemble order."""
    configs = (
        build_gate_config(name=name, options=options),
        build_decode_config(name=name, options=options),
        build_detector_config(name=name, label_maps=label_maps, options=options, warmup=warmup),
    )
    return {config.name: config for config in configs}


def config_text(config: Any) -> str:
    """``config`` as the text Triton reads, with ``max_batch_size: 0`` spelt out for DALI.

    Protobuf's text format leaves out fields at their default (0), and the DALI backend reads
    ``max_batch_size`` from ``config.pbtxt`` with its own small parser: without the line it
    takes the model for a batched one and expects the pipeline's shapes without the leading 1.
    """
    text = to_pbtxt(config)
    if config.backend == "dali" and config.max_batch_size == 0:
        text = (
            "# read by the DALI backend itself: an unbatched pipeline\nmax_batch_size: 0\n" + text
        )
    return text


class GpuDecodeSiblings:
    """Writes (and on failure takes back) the sibling models of ``<repository>/<name>``.

    Call it under ``<name>``'s export lock, after the new version of ``<name>`` is published.

    Args:
        repository: the model repository.
        name: the model whose siblings these are.
        staging_prefix: name prefix of hidden staging entries (the repository writer's, so one
            sweep removes what an export killed outright left).
    """

    def __init__(self, repository: Path, name: str, *, staging_prefix: str) -> None:
        self.repository = Path(repository)
        self.name = name
        self.prefix = staging_prefix
        self._config_backups: dict[Path, bytes | None] = {}
        self._added: list[Path] = []
        self._new_warmup: list[Path] = []
        self._warmup: tuple[str, ...] = ()

    @property
    def model_dirs(self) -> list[Path]:
        return [self.repository / model for model in gpu_decode_model_names(self.name)]

    @property
    def config_paths(self) -> tuple[Path, ...]:
        """Every config file of the siblings (each has ``config.pbtxt`` = ``configs/gpu.pbtxt``)."""
        return tuple(
            path
            for model_dir in self.model_dirs
            for path in (model_dir / "configs" / "gpu.pbtxt", model_dir / "config.pbtxt")
        )

    def warn_if_left_behind(self) -> None:
        """Log that siblings of an earlier ``--gpu-decode`` export are no longer kept up."""
        left = [d.name for d in self.model_dirs if (d / "config.pbtxt").is_file()]
        if left:
            logger.warning(
                "exporting %s without --gpu-decode: its GPU flavour takes pixels again, and %s "
                "keep their versions (no longer mirrored); remove them, or export with "
                "--gpu-decode",
                self.name,
                ", ".join(left),
            )

    def check(self) -> None:
        """Refuse to write into a model folder that is not a sibling of ``name``.

        Raises:
            RepositoryError: a folder of a sibling's name holds another model.
        """
        for model_dir in self.model_dirs:
            if not model_dir.exists():
                continue
            config = model_dir / "config.pbtxt"
            try:
                parameters = parse_pbtxt(config.read_text(encoding="utf-8")).parameters
                owner = parameters[GPU_DECODE_PART_PARAMETER].string_value
            except (OSError, UnicodeDecodeError, _errors_module.ConfigError):
                owner = ""
            if owner != self.name:
                raise RepositoryError(
                    f"{model_dir} exists and is not a --gpu-decode sibling of '{self.name}' "
                    f"(its config.pbtxt has no {GPU_DECODE_PART_PARAMETER} '{self.name}'); "
                    "rename one of the models, or export without --gpu-decode"
                )

    def write(
        self,
        *,
        versions: Sequence[int],
        label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]],
        options: ConfigOptions,
        warmup: Sequence[WarmupSample] = (),
    ) -> None:
        """Mirror ``versions`` of ``<name>`` in every sibling and write the siblings' configs.

        ``warmup`` names ``<name>/warmup/`` files (written, not yet named by ``<name>``'s
        configs); the detector gets links to them under the same names. Call :meth:`finish`
        once the export can no longer fail, to delete the detector's older warmup files.

        Raises:
            RepositoryError: a sibling cannot be written (after :meth:`rollback` is called by
                the caller, the repository is as it was).
        """
        self.check()
        configs = sibling_configs(self.name, label_maps, options, warmup)
        self._warmup = tuple(sample.file_name for sample in warmup)
        detector = gpu_decode_model_names(self.name)[2]
        for model_dir in self.model_dirs:
            text = config_text(configs[model_dir.name]).encode("utf-8")
            if model_dir.exists():
                self._sweep(model_dir)
                self._add_versions(model_dir, versions)
                if model_dir.name == detector:  # the files first, then the config naming them
                    self._new_warmup += self._link_warmup(model_dir)
                for path in (model_dir / "configs" / "gpu.pbtxt", model_dir / "config.pbtxt"):
                    self._config_backups[path] = path.read_bytes() if path.exists() else None
                    self._replace(path, text)
                fsync_directory(model_dir / "configs")
                fsync_directory(model_dir)
            else:
                self._create(model_dir, versions, text)
            extra = [v for v in _version_numbers(model_dir) if v not in set(versions)]
            if extra:  # never deleted here: a version someone removed from <name> only
                logger.warning(
                    "%s holds version(s) %s that %s no longer has; the newest is served as that "
                    "step's latest: remove them",
                    model_dir,
                    ", ".join(map(str, extra)),
                    self.name,
                )

    def finish(self) -> None:
        """Delete the detector's warmup files its config no longer names (the export is done)."""
        warmup_dir = self.repository / gpu_decode_model_names(self.name)[2] / "warmup"
        for stale in warmup_dir.glob("*.raw"):
            if stale.name not in self._warmup:
                stale.unlink(missing_ok=True)

    def rollback(self) -> None:
        """Take back what :meth:`write` added: configs restored, new folders removed."""
        for path, data in self._config_backups.items():
            with contextlib.suppress(OSError):
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    self._replace(path, data)
        for path in self._new_warmup:  # no config names them any more
            path.unlink(missing_ok=True)
        for added in reversed(self._added):
            hidden = Path(tempfile.mkdtemp(prefix=self.prefix, dir=added.parent))
            with contextlib.suppress(OSError):
                os.rename(added, hidden / "retired")
                fsync_directory(added.parent)
            shutil.rmtree(hidden, ignore_errors=True)
        self._added.clear()
        self._config_backups.clear()
        self._new_warmup.clear()

    # ------------------------------------------------------------------ internals

    def _replace(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, mode=0o644, prefix=f"{self.prefix}{path.name}.")

    def _sweep(self, model_dir: Path) -> None:
        remove_leftovers((model_dir, model_dir / "configs"), self.prefix)

    def _create(self, model_dir: Path, versions: Sequence[int], config_text: bytes) -> None:
        """A new sibling, whole: staged inside ``<name>/`` (Triton ignores it), then renamed."""
        staging = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.repository / self.name))
        try:
            (staging / "configs").mkdir()
            for path in (staging / "configs" / "gpu.pbtxt", staging / "config.pbtxt"):
                path.write_bytes(config_text)
            for version in versions:
                self._fill_version(staging / str(version), model_dir.name, version)
            if model_dir.name == gpu_decode_model_names(self.name)[2]:
                self._link_warmup(staging)
            _make_readable(staging)
            fsync_directory(staging / "configs")
            fsync_directory(staging)
            self._publish(staging, model_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _add_versions(self, model_dir: Path, versions: Sequence[int]) -> None:
        for version in versions:
            target = model_dir / str(version)
            if os.path.lexists(target):
                if version == max(versions):  # the number just written: reused if removed
                    self._check_mirrored(target, version)
                continue  # never overwrite: a mirrored version is left as it is
            staging = Path(tempfile.mkdtemp(prefix=self.prefix, dir=model_dir))
            try:
                self._fill_version(staging / "v", model_dir.name, version)
                _make_readable(staging)
                fsync_directory(staging)
                self._publish(staging / "v", target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _check_mirrored(self, target: Path, version: int) -> None:
        """A detector version must hold ``<name>``'s graph of that version, not another one.

        Raises:
            RepositoryError: it holds another graph (a version of ``<name>`` was removed by
                hand and its number written again): the GPU flavour would serve the old graph.
        """
        if target.parent.name != gpu_decode_model_names(self.name)[2]:
            return
        mirrored = target / "model.onnx"
        source = self.repository / self.name / str(version) / "model.onnx"
        with contextlib.suppress(OSError):
            if os.path.samefile(mirrored, source) or filecmp.cmp(mirrored, source, shallow=False):
                return
        raise RepositoryError(
            f"{mirrored} is not {source} (was version {version} of '{self.name}' removed by "
            f"hand and written again?); the GPU flavour would serve the old graph. Remove "
            f"version {version} of the --gpu-decode siblings, then export again"
        )

    def _link_warmup(self, model_dir: Path) -> list[Path]:
        """Link ``<name>``'s new warmup files into ``model_dir/warmup``; the new paths."""
        warmup_dir = model_dir / "warmup"
        warmup_dir.mkdir(exist_ok=True)
        added = []
        for file_name in self._warmup:
            target = warmup_dir / file_name
            if os.path.lexists(target):
                continue
            _link_or_copy(self.repository / self.name / "warmup" / file_name, target)
            added.append(target)
        fsync_directory(warmup_dir)
        return added

    def _publish(self, staging: Path, target: Path) -> None:
        if os.path.lexists(target):
            raise RepositoryError(
                f"{target} was created by something else during the export; nothing replaced"
            )
        os.rename(staging, target)
        self._added.append(target)
        fsync_directory(target.parent)

    def _fill_version(self, folder: Path, model: str, version: int) -> None:
        """What one version of sibling ``model`` holds."""
        folder.mkdir()
        gate, decode, detector = gpu_decode_model_names(self.name)
        if model == gate:
            shutil.copyfile(GATE_SOURCE, folder / "model.py")
            package = folder / "detstack"
            package.mkdir()
            (package / "__init__.py").write_bytes(_VENDORED_INIT)
            for module in VENDORED_MODULES:
                shutil.copyfile(module, package / module.name)
        elif model == decode:
            shutil.copyfile(PIPELINE_SOURCE, folder / "dali.py")
        elif model == detector:
            _link_or_copy(self.repository / self.name / str(version) / "model.onnx", folder)
        fsync_directory(folder)


def _version_numbers(model_dir: Path) -> list[int]:
    return sorted(int(entry.name) for entry in model_dir.iterdir() if entry.name.isdigit())


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link of ``source`` at ``target`` (a folder: same name in it), else a copy."""
    if target.is_dir():
        target = target / source.name
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)


def _make_readable(root: Path) -> None:
    """mkdtemp makes 0700 folders; Triton (maybe another user) reads them: 0755 and 0644."""
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
