"""INT8 quantization on hand-built graphs: what makes onnxruntime run integer kernels.

Small graphs in the shape the TorchScript exporter writes (uint8 ``image`` in, convolutions with
folded batch-norm biases, equal biases shared through ``Identity`` aliases), so each property
is checked in a second, without training a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quantize import QuantizationPlan, fused_kernels, inline_constant_aliases, quantize_int8

CHANNELS = 8


def conv_chain(path: Path, *, aliased_bias: bool, seed: int = 0) -> Path:
    """``image`` (uint8 3xHxW) -> Cast -> Unsqueeze -> 3 x (Conv -> Relu) -> Conv -> ``out``.

    With ``aliased_bias`` the four convolutions share one zero bias, three of them through
    ``Identity`` nodes, as the exporter writes equal initializers.
    """
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pixels", "axes"], ["x0"]),
    ]
    bias = np.zeros(CHANNELS, np.float32)
    initializers.append(numpy_helper.from_array(bias, "bias"))
    previous, channels = "x0", 3
    for index in range(4):
        weight = rng.normal(0, 0.02, (CHANNELS, channels, 3, 3)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{index}"))
        if aliased_bias and index:
            nodes.append(helper.make_node("Identity", ["bias"], [f"bias{index}"]))
            bias_name = f"bias{index}"
        elif aliased_bias:
            bias_name = "bias"
        else:
            own = rng.normal(0, 0.1, CHANNELS).astype(np.float32)
            initializers.append(numpy_helper.from_array(own, f"b{index}"))
            bias_name = f"b{index}"
        conv = f"c{index}"
        nodes.append(
            helper.make_node(
                "Conv",
                [previous, f"w{index}", bias_name],
                [conv],
                name=f"/conv{index}/Conv",
                pads=[1, 1, 1, 1],
            )
        )
        if index < 3:
            nodes.append(helper.make_node("Relu", [conv], [f"r{index}"], name=f"/relu{index}"))
            previous = f"r{index}"
        else:
            nodes.append(helper.make_node("Identity", [conv], ["out"]))
        channels = CHANNELS
    graph = helper.make_graph(
        nodes,
        "conv_chain",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [3, "height", "width"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CHANNELS, "height", "width"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def images(count: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (3, 32, 32), dtype=np.uint8) for _ in range(count)]


def run(path: Path, image: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


PLAN = QuantizationPlan(keep_float=())


def test_every_convolution_becomes_an_integer_kernel(tmp_path):
    fp32 = conv_chain(tmp_path / "fp32.onnx", aliased_bias=False)

    record = quantize_int8(fp32, tmp_path / "int8.onnx", images(), PLAN)

    assert record.quantized_nodes == {"Conv": 4, "Relu": 3}
    assert record.fused.get("QLinearConv") == 4 and "Conv" not in record.fused


def test_convolutions_sharing_a_bias_through_identity_nodes_are_fused_too(tmp_path):
    # Regression: the exporter's Identity aliases of equal (zero) biases kept 64 of
    # fasterrcnn_resnet50_fpn's 70 quantized convolutions float (the quantizer skips a bias
    # that is not an initializer, and onnxruntime fuses no group with a float bias).
    fp32 = conv_chain(tmp_path / "fp32.onnx", aliased_bias=True)

    record = quantize_int8(fp32, tmp_path / "int8.onnx", images(), PLAN)

    assert record.aliases_inlined == 3
    assert record.fused.get("QLinearConv") == 4 and "Conv" not in record.fused
    assert record.to_dict()["identity_aliases_inlined"] == 3


def test_inlining_identity_aliases_changes_no_output(tmp_path):
    fp32 = conv_chain(tmp_path / "fp32.onnx", aliased_bias=True)
    model = onnx.load(str(fp32))

    removed = inline_constant_aliases(model)
    onnx.save(model, str(tmp_path / "inlined.onnx"))

    assert removed == 3
    assert [n.op_type for n in model.graph.node].count("Identity") == 1  # the graph output's
    image = images(1, seed=7)[0]
    np.testing.assert_array_equal(run(fp32, image), run(tmp_path / "inlined.onnx", image))


def test_the_quantized_graph_stays_close_to_the_float_one(tmp_path):
    fp32 = conv_chain(tmp_path / "fp32.onnx", aliased_bias=True)
    calibration = images(8)
    quantize_int8(fp32, tmp_path / "int8.onnx", calibration, PLAN)

    reference = run(fp32, calibration[0])
    quantized = run(tmp_path / "int8.onnx", calibration[0])

    spread = float(reference.max() - reference.min())
    assert spread > 0
    assert float(np.abs(quantized - reference).mean()) < 0.05 * spread


def test_fused_kernels_counts_the_float_graph_as_float(tmp_path):
    fp32 = conv_chain(tmp_path / "fp32.onnx", aliased_bias=False)

    kernels = fused_kernels(fp32)

    assert "QLinearConv" not in kernels
    assert kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == 4


def test_fused_kernels_names_a_graph_onnxruntime_cannot_load(tmp_path):
    from detstack.errors import ExportError

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")

    with pytest.raises(ExportError, match=r"broken\.onnx"):
        fused_kernels(broken)


def test_aliases_read_inside_a_subgraph_are_kept(tmp_path):
    # If/Loop bodies name outer-scope values; removing the alias would leave them dangling.
    constant = numpy_helper.from_array(np.ones(2, np.float32), "constant")
    branch = helper.make_graph(
        [helper.make_node("Identity", ["alias"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["constant"], ["alias"]),
            helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=branch),
        ],
        "with_if",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
        [constant],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)

    assert inline_constant_aliases(model) == 0
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Identity", "If"]
