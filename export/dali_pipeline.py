"""DALI pipeline of ``<name>-decode``: image file in, decoded uint8 CHW image out, on the GPU.

Export copies this file into every version directory of ``<name>-decode`` as ``dali.py``.
Triton's DALI backend finds no serialized ``model.dali`` there, imports ``dali.py`` and
serializes the one pipeline marked ``@autoserialize`` (``nvidia.dali.plugin.triton``) at load
time, so the pipeline is source, reviewed like the rest of ours, and not an opaque blob.

The graph (:func:`decode_graph`):

* ``image_file``: the external source, UINT8, 1-D per sample (DALI's unbatched model: the
  request's ``[1, n]`` is a batch of one file);
* ``fn.decoders.image(device="mixed", output_type=RGB, adjust_orientation=True)``: nvImageCodec;
  JPEG (and JPEG 2000) on the GPU (nvJPEG, the hardware JPEG decoder where the GPU has one),
  every other format it reads (PNG, BMP, TIFF, WebP simple format, PNM) on the CPU inside the
  same operator, then copied to the GPU. EXIF orientation is applied, as our image policy does.
  ``adjust_orientation`` is passed explicitly: a DALI too old to know it refuses the pipeline
  at load instead of serving unrotated photos;
* ``fn.transpose(perm=[2, 0, 1])``: HWC to the CHW the detector's graph takes.

This module imports DALI, which only the DALI backend's environment (and an optional test
venv) has; nothing in detstack imports it. :func:`build_pipeline` builds the same graph on any
device for tests (``device="cpu"``, ``device_id=None`` runs without a GPU).

Example:
    >>> pipe = build_pipeline(device="cpu", device_id=None)     # doctest: +SKIP
    >>> pipe.build(); pipe.feed_input("image_file", [np.frombuffer(jpeg, np.uint8)])
"""

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.triton import autoserialize

#: Names of the pipeline's input and output (detstack.contract's IMAGE_FILE and BATCHED_IMAGE;
#: retyped because the container has no detstack, and tested to agree with the contract).
INPUT_NAME = "image_file"
OUTPUT_NAME = "image"
#: CPU threads of the pipeline: decoders of the formats nvJPEG does not take run on them.
NUM_THREADS = 4


def decode_graph(device):
    """The pipeline's graph: ``image_file`` bytes to a uint8 RGB CHW image on ``device``.

    Args:
        device: ``"mixed"`` (GPU decode, the served pipeline) or ``"cpu"`` (tests).
    """
    files = fn.external_source(device="cpu", name=INPUT_NAME, dtype=types.UINT8, ndim=1)
    images = fn.decoders.image(files, device=device, output_type=types.RGB, adjust_orientation=True)
    return fn.transpose(images, perm=[2, 0, 1])


def build_pipeline(device="mixed", device_id=0, batch_size=1, num_threads=NUM_THREADS):
    """A pipeline of :func:`decode_graph` (not built) for ``device``.

    It runs one batch at a time (no prefetching), so ``pipe.run(image_file=[...])`` answers the
    batch it was given, as a served request is answered.
    """

    @pipeline_def(
        batch_size=batch_size,
        prefetch_queue_depth=1,
        num_threads=num_threads,
        device_id=device_id,
        output_dtype=types.UINT8,
        output_ndim=3,
    )
    def decode():
        return decode_graph(device)

    return decode()


@autoserialize
@pipeline_def(
    batch_size=1,
    num_threads=NUM_THREADS,
    device_id=0,
    output_dtype=types.UINT8,
    output_ndim=3,
)
def pipeline():
    """The served pipeline: GPU decode (the DALI backend places it on the instance's GPU)."""
    return decode_graph("mixed")
