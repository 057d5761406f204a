"""The benchmark behind ``detstack bench``: the served model against the seed's eager wrapper.

It sits above the client (it drives ``DetectionClient``) and beside the demo; it may import the
training stage because its baseline rebuilds the eager model from the checkpoint. The scripts and
recorded results in ``benchmarks/`` use it.

Example:
    >>> from bench import BenchConfig, run_benchmark, write_report
    >>> report = run_benchmark(BenchConfig(images=(Path("photos"),)))    # doctest: +SKIP
    >>> write_report(report, Path("bench-results"))                       # doctest: +SKIP
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_eager": ["EagerBaseline"],
        "_harness": ["run_benchmark"],
        "_images": ["load_bench_images", "photo_jpeg", "pillow_decode_cpu_ms"],
        "_output": ["format_table", "write_report"],
        "_results": [
            "BASELINE",
            "BenchConfig",
            "BenchReport",
            "LatencyResult",
            "parse_photo_size",
        ],
    },
)
