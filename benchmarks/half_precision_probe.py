"""Does onnxruntime's CPU provider run FP16 or BF16 convolutions faster than FP32 here?

Exports a ResNet-18 trunk (the quickstart's backbone; random weights: the compute is the same)
at FP32, FP16 and BF16, and times each on onnxruntime's CPU provider at one image size.

Example:
    $ .venv/bin/python benchmarks/half_precision_probe.py --size 512 --out /tmp/half.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import torch
    import torchvision

    body = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()
    results = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        buffer = io.BytesIO()
        example = torch.zeros(1, 3, args.size, args.size, dtype=dtype)
        try:
            with torch.no_grad():
                torch.onnx.export(
                    body.to(dtype), (example,), buffer, dynamo=False, opset_version=17
                )
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                buffer.getvalue(), options, providers=["CPUExecutionProvider"]
            )
            np_dtype = {"fp32": np.float32, "fp16": np.float16}.get(name)
            feed = example.float().numpy().astype(np_dtype) if np_dtype else None
            if feed is None:
                raise RuntimeError("numpy has no bfloat16 input type for onnxruntime")
            session.run(None, {session.get_inputs()[0].name: feed})
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, {session.get_inputs()[0].name: feed})
                times.append(1000 * (time.perf_counter() - start))
            results[name] = {"median_ms": round(statistics.median(times), 2)}
        except Exception as error:  # report what the runtime refuses
            results[name] = {"error": str(error).splitlines()[0][:300]}
        print(name, results[name])
    report = {
        "onnxruntime": onnxruntime.__version__,
        "size": args.size,
        "threads": args.threads,
        "model": "resnet18 trunk (conv1..layer4), random weights, batch 1",
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
