"""What an engine kind implements, and the small types that travel between the planners and the engines.

An engine kind (one per runtime: ONNX Runtime, OpenVINO, TensorRT, the PyTorch reference) is an `EngineKind`
listed in `registry.KINDS`. A kind says:

- `name`, `title`: its registry key (also the report's backend family) and what people call it;
- `options_type`: the frozen dataclass of its settings (None: it has none); its `SETTINGS` (options.Setting,
  with `from_values`: an options.Configurable) are the kind's flags and build TOML keys (`settings`);
- `cpu_runtime`: True for a runtime of the ONNX models on the CPU (then `--engines` may name it);
- `available()`: None, or the one line saying why it cannot run here;
- `_plan(model, settings)`: the engines it runs for one model file (usually one; OpenVINO adds openvino-bf16);
- `_runner(spec)`: the Runner of one of them;
- only a kind that compiles a file (TensorRT): `build(spec, folder)` writes it and returns its manifest, and
  `built(path, settings)` is the spec of such a file written earlier (validate/bench --engine).

The checks live here, in the base (as polygraphy keeps its runners' checks in BaseRunner): only the kinds asked
for are planned, and a spec goes to its own kind with options of that kind's type.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..options import Setting
from .base import Runner
from .naming import engine_name, native_target

T = TypeVar("T")


class Model(Protocol):
    """A model file and what it is (a build's OnnxArtifact is one, so is a ModelFile)."""

    @property
    def path(self) -> Path: ...

    @property
    def precision(self) -> str: ...

    @property
    def target(self) -> str | None: ...


@dataclass(frozen=True)
class ModelFile:
    """A model file outside a build (validate, bench, serve-check, benchmarks/): its path, precision and INT8 target."""

    path: Path
    precision: str
    target: str | None = None


@dataclass(frozen=True)
class EngineSettings:
    """What engines need to know from the command that plans them (the build: `BuildConfig.engine_settings()`)."""

    kinds: tuple[str, ...] = ("onnxruntime",)  # the kinds to plan, by name (a build: --engines, tensorrt with --target)
    threads: int | None = None
    batch_sizes: tuple[int, ...] = (1,)  # the batch sizes the engines are timed at (--batch-sizes)
    largest_batch: int = 1  # the largest batch they see besides those (validation's --batch-size)
    opt_batch: int | None = None  # the batch size shape-tuned engines optimize for (None: the median of batch_sizes)
    folder: Path | None = None  # where files a kind compiles go (None: beside the model)
    options: tuple[Any, ...] = ()  # at most one instance per options type; a kind not given one gets its defaults

    def options_for(self, kind: type[T]) -> T:
        found = [o for o in self.options if isinstance(o, kind)]
        if len(found) > 1:
            raise RuntimeError(f"engine settings hold {len(found)} {kind.__name__}s; give one")
        return found[0] if found else kind()


@dataclass(frozen=True)
class EngineSpec:
    """One engine: which kind runs which model, from which file, computing in which precision, with which options.

    `name` defaults to `<backend>-<precision>[-<target>]` (naming.engine_name); `dataclasses.replace` keeps it.
    """

    kind: str  # the registry entry (EngineKind.name)
    backend: str  # the report's backend: the kind's name, or a variant of it (onnxruntime-cuda)
    model: Model  # the model it runs, or that its file is built from
    file: Path  # the file its runner loads: the model's ONNX, or the file the kind compiles from it
    precision: str  # what it computes in: the model's, or another (openvino-bf16 runs the FP32 model in bf16)
    options: Any = None  # an instance of the kind's options_type
    threads: int | None = None
    profile: tuple[int, int, int] | None = None  # (min, opt, max) batch sizes, for kinds that tune for shapes
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", engine_name(self.backend, self.precision, self.target))

    @property
    def target(self) -> str | None:
        return self.model.target

    def in_folder(self, folder: Path) -> EngineSpec:
        """The same engine with its file in `folder` (where `build` wrote it)."""
        return replace(self, file=Path(folder) / self.file.name)


class EngineKind(abc.ABC):
    """One engine kind. Subclasses set `name`, `title` (and `options_type`) and implement `_plan` and `_runner`."""

    name: str = "?"
    title: str = "?"
    options_type: type | None = None
    cpu_runtime: bool = False  # runs every ONNX model on the CPU: one of the build's CPU engines (config.Engine)

    @property
    def native_target(self) -> str:
        """The INT8 target whose model this kind runs by default (naming.NATIVE_TARGET; its own name if not listed)."""
        return native_target(self.name)

    @property
    def builds(self) -> bool:
        """Whether it compiles a file from the model (then `build` must run before `runner`)."""
        return type(self).build is not EngineKind.build

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Its options type's settings: flags and TOML keys (none without an options type or settings)."""
        return getattr(self.options_type, "SETTINGS", ())

    def available(self) -> str | None:
        """None when it can run here, else the one line saying why not."""
        return None

    def options(self, settings: EngineSettings) -> Any:
        return None if self.options_type is None else settings.options_for(self.options_type)

    def spec(self, model: Model, settings: EngineSettings, **fields: Any) -> EngineSpec:
        """A spec of this kind for `model` with the settings' options and threads; `fields` override the defaults."""
        values = {
            "backend": self.name,
            "file": Path(model.path),
            "precision": model.precision,
            "options": self.options(settings),
            "threads": settings.threads,
        }
        return EngineSpec(kind=self.name, model=model, **{**values, **fields})

    def plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]:
        """The engines of this kind for `model`: none unless the settings ask for this kind."""
        if self.name not in settings.kinds:
            return []
        specs = self._plan(model, settings)
        foreign = [s.name for s in specs if s.kind != self.name]
        if foreign:
            raise RuntimeError(f"{self.title} planned engines of another kind: {', '.join(foreign)}")
        return specs

    def runner(self, spec: EngineSpec) -> Runner:
        """The runner of `spec` (not yet active: use it in a `with` block)."""
        if spec.kind != self.name:
            raise RuntimeError(f"engine {spec.name} is a {spec.kind} engine, not {self.name}")
        if self.options_type is not None and not isinstance(spec.options, self.options_type):
            raise RuntimeError(f"engine {spec.name}: expected {self.options_type.__name__}, got {type(spec.options).__name__}")
        return self._runner(spec)

    def build(self, spec: EngineSpec, folder: Path) -> dict[str, Any]:
        """Compile `spec.model` into `folder / spec.file.name`; what the report records about the file (its manifest)."""
        raise NotImplementedError(f"{self.title} runs the model file as it is; it builds nothing")

    def built(self, path: Path, settings: EngineSettings) -> EngineSpec:
        """The spec of a file this kind compiled earlier (read from its manifest)."""
        raise NotImplementedError(f"{self.title} builds no files")

    @abc.abstractmethod
    def _plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]: ...

    @abc.abstractmethod
    def _runner(self, spec: EngineSpec) -> Runner: ...
