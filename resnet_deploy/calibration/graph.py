"""Reading ONNX graphs for the precision stages: node selection by regex, Q/DQ structure, counts."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..artifacts import OnnxArtifact
from ..errors import CheckFailed, UserError
from ..files import sha256_file

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # written by torch.onnx.export(dynamo=True) on each node
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def module_path(node) -> str | None:
    """The PyTorch module a node came from (e.g. 'layer1.0.conv1'), from the exporter's node metadata."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2:
                return str(scopes[-2])  # the last entry names the aten op, the one before it the module
    return None


def load_onnx(path: Path):
    """The graph of an ONNX file without its weights' external data (for reading structure).

    Through the checked loader: an ONNX whose external data points outside its folder is refused.
    """
    from ..artifacts import read_onnx

    return read_onnx(path)


def shape_inferred(path: Path) -> bytes:
    """An FP32 ONNX with inferred shapes, serialized: what the statistics pass and ONNX Runtime's quantizer start from
    (the quantizer after `add_infer_metadata`: then it is its `load_model_with_shape_infer`'s model, byte for byte).

    Shape inference is a fixed cost of both, and a mixed-precision search or `layers` quantizes the same file dozens
    of times: kept per file version (inode, size, mtime).
    """
    stat = Path(path).stat()
    return _shape_inferred(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


SHAPE_DATA_BYTES = 1024  # initializers up to this size keep their values for shape inference (shape constants)


@functools.lru_cache(maxsize=2)
def _shape_inferred(path: str, *identity: int) -> bytes:
    # onnx.shape_inference.infer_shapes, on the graph without its weights' values: it reads a weight's dims, never
    # its values, so the result is the same, without serializing and parsing the weights (about 100 MB on
    # ResNet-50) twice more inside the call; they are put back for the result.
    import onnx

    model = onnx.load(path)
    values = {}
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) > SHAPE_DATA_BYTES:
            values[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    inferred = onnx.shape_inference.infer_shapes(model)
    for tensor in inferred.graph.initializer:
        if tensor.name in values:
            tensor.raw_data = values[tensor.name]
    return inferred.SerializeToString()


def excluded_nodes(model, pattern: str | None) -> list[str]:
    """Names of the nodes whose name or PyTorch module path matches `pattern` (re.search).

    A pattern that matches no node is a mistake the user should hear about, with names to choose from.
    """
    if not pattern:
        return []
    regex = re.compile(pattern)
    nodes = [n for n in model.graph.node if n.op_type not in QDQ_OPS]
    matched = [n.name for n in nodes if regex.search(n.name) or ((path := module_path(n)) and regex.search(path))]
    if not matched:
        examples = [f"{n.name} ({module_path(n)})" if module_path(n) else n.name for n in nodes if n.op_type in ("Conv", "Gemm")]
        raise UserError(
            f"--exclude-layers {pattern!r} matches no node; it is searched in node names and module paths, "
            f"e.g. {', '.join(examples[:3])}"
        )
    return matched


def producers(model) -> dict[str, object]:
    return {out: node for node in model.graph.node for out in node.output}


def quantized_nodes(model) -> list[str]:
    """Compute nodes (not Q/DQ) that read at least one dequantized tensor: the nodes running in INT8."""
    made_by = producers(model)
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in QDQ_OPS
        and any((p := made_by.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input)
    ]


def count_ops(model, ops: Iterable[str]) -> int:
    wanted = set(ops)
    return sum(1 for node in model.graph.node if node.op_type in wanted)


def residual_adds(model) -> list[tuple[object, list[list[str]]]]:
    """Each Add whose two inputs are both activations, with the op chain behind each input.

    The chain walks back through Q/DQ nodes to the first compute node: ['DequantizeLinear',
    'QuantizeLinear', 'Relu'] is a shortcut quantized after a Relu; ['Conv'] a bare conv output.
    """
    made_by = producers(model)
    initializers = {i.name for i in model.graph.initializer}
    adds = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in initializers for i in node.input):
            continue
        chains = []
        for name in node.input:
            chain, producer = [], made_by.get(name)
            while producer is not None:
                chain.append(producer.op_type)
                if producer.op_type not in QDQ_OPS:
                    break
                producer = made_by.get(producer.input[0])
            chains.append(chain or ["<graph input>"])
        adds.append((node, chains))
    return adds


def checked_onnx(path: Path, what: str):
    """Load an ONNX a stage just wrote and run onnx.checker on it: a failure is the stage's own fault.

    The checker gets the loaded model (a quarter of the time it takes to read the file itself: 0.4 s instead of
    1.6 s on ResNet-50), or the path when weights are stored outside the file, which only it can check there.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    outside = any(uses_external_data(t) for t in model.graph.initializer)
    try:
        onnx.checker.check_model(str(path) if outside else model)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"{what} fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    return model


def derived_artifact(
    fp32: OnnxArtifact, model, path: Path, precision: str, target: str | None, details: dict[str, Any]
) -> OnnxArtifact:
    """The artifact of a model made from `fp32`: same arch, preprocessing and I/O; source = the FP32 ONNX."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), fp32.opset)
    return OnnxArtifact(
        path=Path(path),
        arch=fp32.arch,
        num_classes=fp32.num_classes,
        preprocess=fp32.preprocess,
        precision=precision,
        target=target,
        input_name=fp32.input_name,
        output_name=fp32.output_name,
        opset=opset,
        source_sha256=sha256_file(fp32.path),
        details=details,
        class_names=fp32.class_names,
        origin=fp32.origin,
    )
