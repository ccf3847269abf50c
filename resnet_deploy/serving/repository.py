"""A Triton model repository from a build's output folder, and reading one back.

`write_repository(OUT, DIR, options)` reads what `resnet-deploy build` left in OUT (report.json, each
engine's file and its sidecar or manifest) and writes one Triton model per engine file:

    DIR/<model>/config.pbtxt     Triton's ModelConfig (text format), checked by parsing it back
    DIR/<model>/labels.txt       class names, one a line (Triton's classification extension returns them)
    DIR/<model>/README.md        what the model is, its preprocessing, how to query it
    DIR/<model>/1/model.onnx     (or model.plan for TensorRT; plus model.py in the Python-backend variant)

Model names are `<arch>-<precision>[-<target>]-<backend>` (e.g. `resnet50-int8-onnxruntime`), the engine's
report name reordered so that one model's variants sort together; a best-effort mixed-precision model adds
`-best-effort`. The repository is written into a hidden staging folder and moved into place when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import EngineArtifact, OnnxArtifact, read_onnx, sidecar_path
from ..errors import CheckFailed, MissingDependency, UserError
from ..files import read_user_text, staged_output_dir, write_text_atomic
from .kinds import PYTHON_MODEL_SOURCE, InstanceKind, Kind, RepositoryOptions, ServedModel, TensorSpec, kind_of, set_parameter

LABELS_FILE = "labels.txt"
NATIVE_BACKEND_NAMES = {
    "onnxruntime": "ONNX Runtime (`onnxruntime_onnx`)",
    "openvino": "OpenVINO",
    "tensorrt": "TensorRT (`tensorrt_plan`)",
}
VERSION = "1"
PARAMETER_PREFIX = "resnet_deploy."  # the parameters serve-check reads back: engine, backend, precision, target, ...

# ONNX element types -> Triton data types (the ones an image classifier's inputs and outputs can have).
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 7: "TYPE_INT64", 6: "TYPE_INT32"}


def model_config_pb2():
    """Triton's ModelConfig protobuf module (tritonclient), or a one-line MissingDependency."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except ImportError:
        raise MissingDependency(
            "the Triton commands need tritonclient (Triton's ModelConfig and gRPC client): pip install 'resnet-deploy[triton]'"
        ) from None
    return pb2


@dataclass
class Exported:
    """What `write_repository` wrote: the models, and notes on engines without one."""

    path: Path
    models: list[ServedModel]
    labels: list[str]
    python_backend: bool
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ reading a build


def model_name(arch: str, engine: str, backend: str, precision: str, path: Path) -> str:
    """`<arch>-<precision>[-<target>]-<backend>` from the engine's report name, e.g. resnet50-int8-tensorrt-openvino."""
    suffix = engine[len(f"{backend}-{precision}") :] if engine.startswith(f"{backend}-{precision}") else ""
    name = f"{arch}-{precision}{suffix}-{backend}" + ("-best-effort" if ".best-effort." in path.name else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")


def _onnx_tensors(path: Path) -> tuple[TensorSpec, TensorSpec, bool]:
    """The image input and the logits output of an ONNX file, and whether its first axis is a free batch axis."""
    from onnx.external_data_helper import uses_external_data

    proto = read_onnx(path, option="engine file")
    if any(uses_external_data(t) for t in proto.graph.initializer):
        raise UserError(f"{path} keeps its weights in external data files; the repository export copies single-file ONNX only")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1 or not proto.graph.output:
        raise UserError(f"{path} has {len(inputs)} inputs; a served classifier has one image input")

    def spec(value) -> tuple[TensorSpec, bool]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        data_type = ONNX_TO_TRITON.get(tensor.elem_type)
        if data_type is None or not dims:
            raise UserError(f"{path}: tensor {value.name!r} (type {tensor.elem_type}, shape {dims}) cannot be served")
        batched = dims[0] in (-1, 0)
        return TensorSpec(value.name, data_type, tuple(dims[1:] if batched else dims)), batched

    (image, batched), (logits, _) = spec(inputs[0]), spec(proto.graph.output[0])
    return image, logits, batched


def _build_report(build: Path) -> dict[str, Any]:
    from ..reports.schema import read_report

    build = Path(build)
    if not build.is_dir():
        raise UserError(f"build folder {build} does not exist; give the --out folder of resnet-deploy build")
    if not (build / "report.json").is_file():
        raise UserError(f"{build} has no report.json; give the --out folder of a finished resnet-deploy build")
    return read_report(build / "report.json", "build report")


def batch_sizes(report: dict[str, Any]) -> list[int]:
    """The batch sizes the build benchmarked (its --batch-sizes)."""
    return sorted({row["batch_size"] for e in report["engines"] for row in e.get("latency", [])}) or [1]


def plan_models(build: Path, options: RepositoryOptions) -> tuple[list[ServedModel], list[str], dict[str, Any]]:
    """The models for the engines of the build in `build`, notes on engines that get none, and the report."""
    report = _build_report(build)
    arch = report["model"]["arch"]
    largest = options.max_batch_size or max(batch_sizes(report))
    models, notes = [], []
    for engine in report["engines"]:
        name, backend = engine["name"], engine["backend"]
        if engine.get("error") or not engine.get("path"):
            notes.append(f"{name}: no model ({engine.get('error') or 'no engine file'})")
            continue
        if kind_of(backend, options.python_backend) is None:
            why = "the Python-backend variant runs ONNX files on the CPU" if options.python_backend else "no Triton backend"
            notes.append(f"{name}: no model ({why}; {backend} engines need the native repository)")
            continue
        path = Path(build) / Path(engine["path"]).name  # the folder may have moved since the build
        if path.suffix == ".engine":
            manifest = EngineArtifact.read(path)
            image = TensorSpec(manifest.input_name, "TYPE_FP32", tuple(manifest.preprocess["input_size"]))
            logits = TensorSpec(manifest.output_name, "TYPE_FP32", (manifest.num_classes,))
            batched, most, preprocess, meta = (
                True,
                min(largest, manifest.profile["max"]),
                manifest.preprocess,
                manifest.metadata(),
            )
        else:
            artifact = OnnxArtifact.read(path)
            image, logits, batched = _onnx_tensors(path)
            most, preprocess, meta = largest if batched else 0, artifact.preprocess, None
        served = ServedModel(
            name=model_name(arch, name, backend, engine["precision"], path),
            engine=name,
            backend=backend,
            precision=engine["precision"],
            target=engine.get("target"),
            source=path,
            source_sha256=json.loads(sidecar_path(path).read_text(encoding="utf-8"))["sha256"],  # checked by .read above
            input=image,
            output=logits,
            batched=batched,
            max_batch_size=most,
            preprocess=preprocess,
            manifest=meta,
        )
        models.append(served)
    if not models:
        raise UserError(
            f"{build} has no engine files a Triton repository can serve ({'; '.join(notes) or 'no engines'}); "
            "build ONNX Runtime or OpenVINO engines (or TensorRT ones on a GPU) first"
        )
    return models, notes, report


def class_labels(report: dict[str, Any]) -> tuple[list[str], str | None]:
    """The model's class names in classifier order (report.json's `model.class_names`: what every artifact's sidecar
    records, from --labels, the checkpoint or the --val-data class folders) for labels.txt, or their indices with a note."""
    num_classes = report["model"]["num_classes"]
    names = report["model"].get("class_names")
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) and "\n" not in n for n in names):
        return names, None
    why = "the build recorded no class names" if not names else f"the report's class names are not {num_classes} one-line names"
    return [str(i) for i in range(num_classes)], f"labels.txt holds class indices: {why}"


# ---------------------------------------------------------------------------------------- config.pbtxt


def preprocess_parameters(preprocess: dict[str, Any]) -> dict[str, str]:
    """The preprocessing clients must apply (they send preprocessed NCHW float32 tensors), as config parameters."""
    return {
        "preprocess.input_size": "x".join(str(v) for v in preprocess["input_size"]),
        "preprocess.interpolation": str(preprocess["interpolation"]),
        "preprocess.crop_pct": f"{preprocess['crop_pct']:g}",
        "preprocess.crop_mode": str(preprocess.get("crop_mode", "center")),
        "preprocess.mean": ",".join(f"{v:g}" for v in preprocess["mean"]),
        "preprocess.std": ",".join(f"{v:g}" for v in preprocess["std"]),
        "preprocess.layout": "NCHW, RGB, float32: pixel / 255, then (x - mean) / std per channel",
    }


def model_config(model: ServedModel, kind: Kind, options: RepositoryOptions, preferred: list[int]):
    """The ModelConfig message of one model: what every model shares, then its kind's part."""
    pb2 = model_config_pb2()
    config = pb2.ModelConfig()
    config.name = model.name
    config.max_batch_size = model.max_batch_size
    for spec, items in ((model.input, config.input), (model.output, config.output)):
        item = items.add()
        item.name, item.data_type = spec.name, pb2.DataType.Value(spec.data_type)
        item.dims.extend(spec.dims)
    config.output[0].label_filename = LABELS_FILE
    if model.batched and model.max_batch_size > 1:
        config.dynamic_batching.preferred_batch_size.extend(b for b in preferred if 1 < b <= model.max_batch_size)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add()
    group.count = options.instance_count
    instance = kind.instance or options.instance_kind or (InstanceKind.GPU if "-" in model.backend else InstanceKind.CPU)
    group.kind = pb2.ModelInstanceGroup.Kind.Value(f"KIND_{instance.value.upper()}")
    for key, value in {
        f"{PARAMETER_PREFIX}engine": model.engine,
        f"{PARAMETER_PREFIX}backend": model.backend,
        f"{PARAMETER_PREFIX}precision": model.precision,
        f"{PARAMETER_PREFIX}target": model.target or "",
        f"{PARAMETER_PREFIX}variant": "python" if options.python_backend else "native",
        f"{PARAMETER_PREFIX}source_sha256": model.source_sha256,
        **preprocess_parameters(model.preprocess),
    }.items():
        set_parameter(config, key, value)
    kind.configure(config, model, options)
    return config


def config_text(config) -> str:
    """config.pbtxt's text, checked by parsing it back into Triton's ModelConfig (which refuses unknown fields)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config) + "\n"
    if parse_config(text, f"config of {config.name}") != config:
        raise CheckFailed(f"config.pbtxt of {config.name} does not parse back to the same ModelConfig")
    return text


def parse_config(text: str, where: str):
    """A config.pbtxt's text as Triton's ModelConfig; a field or value Triton does not know is a UserError."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(
            f"{where} is not a valid Triton model configuration ({exc}); write it again with resnet-deploy triton"
        ) from None


# ------------------------------------------------------------------------------------------ writing


def check_target(repo: Path, force: bool, option: str = "--repo") -> None:
    """Refuse an existing --repo without --force (before a build spends minutes), or a file there."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UserError(f"{option} {repo} is a file; give a folder path")
    if repo.exists() and not force:
        raise UserError(f"{option} {repo} already exists; pass --force to replace it, or choose another folder")


def write_repository(
    build: Path, repo: Path, options: RepositoryOptions = RepositoryOptions(), force: bool = False, option: str = "--repo"
) -> Exported:
    """One Triton model per engine file of the build in `build`, written to `repo` (replaced only with `force`)."""
    check_target(repo, force, option)
    models, notes, report = plan_models(build, options)
    labels, label_note = class_labels(report)
    notes += [label_note] if label_note else []
    preferred = list(options.preferred_batch_sizes or batch_sizes(report))
    texts = {m.name: config_text(model_config(m, kind_of(m.backend, options.python_backend), options, preferred)) for m in models}
    with staged_output_dir(Path(repo), force, option=option) as stage:
        for model in models:
            kind = kind_of(model.backend, options.python_backend)
            folder = stage / model.name
            (folder / VERSION).mkdir(parents=True)
            shutil.copyfile(model.source, folder / VERSION / kind.model_file)
            if "model.py" in kind.extra_files:
                shutil.copyfile(PYTHON_MODEL_SOURCE, folder / VERSION / "model.py")
            write_text_atomic(folder / "config.pbtxt", texts[model.name])
            write_text_atomic(folder / LABELS_FILE, "".join(f"{label}\n" for label in labels))
            write_text_atomic(folder / "README.md", model_readme(model, kind, options, report))
    return Exported(Path(repo), models, labels, options.python_backend, notes)


def model_readme(model: ServedModel, kind: Kind, options: RepositoryOptions, report: dict[str, Any]) -> str:
    p = model.preprocess
    c, h, w = p["input_size"]
    resize = round(min(h, w) / p["crop_pct"])
    engine = next(e for e in report["engines"] if e["name"] == model.engine)
    accuracy = engine.get("accuracy") or {}
    agreement = accuracy.get("top1_agreement")
    runtime = model.backend.split("-")[0]
    if options.python_backend:
        served_by = f"Triton's Python backend (`1/model.py` runs `1/model.onnx` with {runtime}, on the CPU)"
    else:
        served_by = f"Triton's {NATIVE_BACKEND_NAMES[runtime]} backend"
    lines = [
        f"# {model.name}",
        "",
        f"The `{model.engine}` engine of a resnet-deploy build of `{report['model']['arch']}` "
        f"({report['model']['num_classes']} classes), served by {served_by}.",
        "",
        f"- precision: {model.precision}" + (f", INT8 recipe for {model.target}" if model.target else ""),
        f"- source: `{model.source.name}` (sha256 `{model.source_sha256}`)",
        "- top-1 agreement with the PyTorch model in the build: "
        + ("n/a" if agreement is None else f"{agreement * 100:.2f}% on {accuracy.get('samples')} images"),
        f"- input `{model.input.name}`: {model.input.data_type[5:]} {list(model.input.dims)}"
        + (f", batched up to {model.max_batch_size} (dynamic batching)" if model.batched else ""),
        f"- output `{model.output.name}`: {model.output.data_type[5:]} {list(model.output.dims)} logits; class names in "
        f"`{LABELS_FILE}` (ask for `class_count` to get `score:index:label` strings)",
        "",
        "## Preprocessing (clients send preprocessed tensors)",
        "",
        f"1. Decode the image as RGB; resize so the shorter side is {resize} pixels ({p['interpolation']}), "
        f"then take the center {h}x{w} crop (crop_pct {p['crop_pct']:g}, mode {p.get('crop_mode', 'center')}).",
        f"2. Scale to 0..1 (pixel / 255), subtract mean {list(p['mean'])} and divide by std {list(p['std'])}, per channel.",
        f"3. Send float32 in NCHW layout, shape [N, {c}, {h}, {w}].",
        "",
        "The same settings are in `config.pbtxt` as the `preprocess.*` parameters.",
        "",
        "## Query it",
        "",
        "```python",
        "import numpy as np, tritonclient.grpc as grpc",
        "client = grpc.InferenceServerClient('localhost:8001')",
        f"x = grpc.InferInput('{model.input.name}', [1, {c}, {h}, {w}], 'FP32')",
        f"x.set_data_from_numpy(np.zeros((1, {c}, {h}, {w}), np.float32))  # your preprocessed image",
        f"result = client.infer('{model.name}', [x], outputs=[grpc.InferRequestedOutput('{model.output.name}', class_count=5)])",
        f"print(result.as_numpy('{model.output.name}'))  # top-5 as b'score:index:label'",
        "```",
    ]
    if model.backend == "tensorrt" and model.manifest:
        gpu = model.manifest.get("gpu", {})
        lines += [
            "",
            f"The plan was built with TensorRT {model.manifest.get('tensorrt_version')} on {gpu.get('name')} (compute "
            f"capability {gpu.get('compute_capability')}): Triton loads it only on such a GPU, with the same TensorRT.",
        ]
    if options.python_backend:
        lines += [
            "",
            f"`EXECUTION_ENV_PATH` in config.pbtxt names the Python environment the model runs in ({options.python_env}): "
            "it needs numpy and onnxruntime (or openvino). Change it where the server runs.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ reading it back


@dataclass(frozen=True)
class RepositoryModel:
    """A model of a repository written by `resnet-deploy triton`, as serve-check needs it."""

    name: str
    folder: Path
    engine: str
    backend: str
    precision: str
    target: str | None
    variant: str  # python | native
    model_file: Path
    input_name: str
    output_name: str
    max_batch_size: int
    preprocess: dict[str, str]


def read_repository(repo: Path) -> list[RepositoryModel]:
    """The models of a repository written by `resnet-deploy triton`, each config checked by Triton's ModelConfig."""
    repo = Path(repo)
    fix = "give the --repo folder written by resnet-deploy triton"
    if not repo.is_dir():
        raise UserError(f"repository {repo} does not exist or is not a folder; {fix}")
    models = []
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / "config.pbtxt"
        if not path.is_file():
            raise UserError(f"{folder} has no config.pbtxt; {fix}")
        config = parse_config(read_user_text(path, str(path), fix), str(path))
        params = {k: v.string_value for k, v in config.parameters.items()}
        if f"{PARAMETER_PREFIX}engine" not in params or not config.input or not config.output:
            raise UserError(f"{path} was not written by resnet-deploy triton (no {PARAMETER_PREFIX}engine parameter); {fix}")
        if config.name and config.name != folder.name:
            raise UserError(f"{path} names the model {config.name!r} but its folder is {folder.name!r}; {fix}")
        model_file = folder / VERSION / (config.default_model_filename or "model.onnx")
        if not model_file.is_file():
            raise UserError(f"{model_file} is missing; {fix}")
        models.append(
            RepositoryModel(
                name=folder.name,
                folder=folder,
                engine=params[f"{PARAMETER_PREFIX}engine"],
                backend=params.get(f"{PARAMETER_PREFIX}backend", ""),
                precision=params.get(f"{PARAMETER_PREFIX}precision", ""),
                target=params.get(f"{PARAMETER_PREFIX}target") or None,
                variant=params.get(f"{PARAMETER_PREFIX}variant", "native"),
                model_file=model_file,
                input_name=config.input[0].name,
                output_name=config.output[0].name,
                max_batch_size=config.max_batch_size,
                preprocess={k: v for k, v in params.items() if k.startswith("preprocess.")},
            )
        )
    if not models:
        raise UserError(f"repository {repo} holds no models; {fix}")
    return models
