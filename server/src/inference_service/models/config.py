"""The model configuration: which models a server loads, from where, on which runtime.

Without ``INFERENCE_MODELS_FILE`` a server serves the two built-in models (``builtin_models``):
``ultraface-rfb-320`` (the default, alias ``face-detector``) and ``ultraface-slim-320``, both
TFLite, from the shared folder when it holds them, else downloaded from their upstream URLs and
checked against their pinned sha256. With it, exactly the models that file lists, in TOML (or
JSON, by the file's suffix)::

    default = "ultraface-rfb-320"          # optional: else the model marked default, else the first

    [[models]]
    name = "ultraface-rfb-320"
    runtime = "tflite"                     # tflite | savedmodel | onnx | python
    source = "/srv/models/version-RFB-320_without_postprocessing.tflite"
    sha256 = "2c46b4b6..."                 # optional pin (required for http and https)
    aliases = ["face-detector"]

A relative ``source`` path is relative to the file's folder. ``docs/operations.md`` ("Models")
has every field.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inference_service.settings import (
    DEFAULT_MODEL_FILE,
    SLIM_MODEL_FILE,
    SLIM_MODEL_SHA256,
    SLIM_MODEL_URL,
    Settings,
)

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""Model names and aliases: 1-64 characters of ``[A-Za-z0-9._-]``, a letter or digit first."""
DEFAULT_ALIAS = "face-detector"
"""The default model's name before models had names of their own; stored invocations carry it."""
SLIM_MODEL_NAME = "ultraface-slim-320"

Runtime = Literal["tflite", "savedmodel", "onnx", "python"]


class ModelConfigError(ValueError):
    """The model configuration is invalid (a clear message says where)."""


class ModelSpec(BaseModel):
    """One model of the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=rf"^{NAME_PATTERN}$")
    """Public name: what ``InvokeRequest.model`` selects and invocations record."""
    runtime: Runtime = "tflite"
    """What runs it: ``tflite`` (LiteRT or tf.lite), ``savedmodel`` (TensorFlow), ``onnx``
    (ONNX Runtime), ``python`` (a detector class of your own, see ``detector``)."""
    source: str | None = None
    """Where the artifact is: a path, ``file://``, ``http(s)://`` or ``s3://bucket/key``; a
    ``.zip``, ``.tar.gz`` or ``.tgz`` is unpacked (a SavedModel folder). Optional for
    ``python`` only."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """Expected sha256 of the artifact (of the archive for archives): any other bytes refuse to
    load. Required for ``http(s)``; verified for every source when given."""
    aliases: tuple[str, ...] = ()
    """Other names that select this model."""
    default: bool = False
    """Whether an Invoke without a model runs this one (at most one model says so)."""
    interpreter: Literal["auto", "litert", "tensorflow"] | None = None
    """``tflite`` only: the interpreter package; unset, ``INFERENCE_TFLITE_RUNTIME``."""
    boxes: Literal["auto", "raw", "decoded"] = "auto"
    """``onnx`` and ``savedmodel``: whether the box output is raw regressions against the priors
    (``raw``) or boxes already decoded to [0, 1] corners (``decoded``); ``auto`` tells them
    apart on the warm-up image."""
    threads: int | None = Field(None, ge=1)
    """Threads the runtime uses for one image; unset, ``INFERENCE_MODEL_THREADS``."""
    score_threshold: float | None = Field(None, gt=0, lt=1)
    """Face score above which a candidate is kept; unset, ``INFERENCE_SCORE_THRESHOLD``."""
    iou_threshold: float | None = Field(None, gt=0, lt=1)
    """Hard-NMS overlap limit; unset, ``INFERENCE_IOU_THRESHOLD``."""
    detector: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """``python`` only: ``package.module:factory``, called as ``factory(path, **options)``
    (``path``: the fetched artifact, or None without a source) to make the detector."""
    options: dict[str, Any] = {}
    """``python`` only: keyword arguments of the factory."""

    @field_validator("aliases")
    @classmethod
    def _check_aliases(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not re.fullmatch(NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not 1-64 characters of [A-Za-z0-9._-]")
        return aliases

    @model_validator(mode="after")
    def _check_runtime_fields(self) -> ModelSpec:
        if self.runtime == "python":
            if self.detector is None:
                raise ValueError("runtime python needs `detector` (package.module:factory)")
        else:
            if self.source is None:
                raise ValueError(f"runtime {self.runtime} needs a `source`")
            if self.detector is not None or self.options:
                raise ValueError("`detector` and `options` are for runtime python only")
        if self.interpreter is not None and self.runtime != "tflite":
            raise ValueError("`interpreter` is for runtime tflite only")
        if self.source is not None:
            scheme = urllib.parse.urlsplit(self.source).scheme
            if scheme in ("http", "https") and self.sha256 is None:
                raise ValueError(f"source {self.source} needs a sha256 pin (http and https)")
        return self


class ModelsConfig(BaseModel):
    """Every model a server serves, and which is the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    """Name of the default model; unset, the one marked ``default``, else the first."""
    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_names(self) -> ModelsConfig:
        seen: set[str] = set()
        for spec in self.models:
            for name in (spec.name, *spec.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                seen.add(name)
        marked = [spec.name for spec in self.models if spec.default]
        if len(marked) > 1:
            raise ValueError(f"more than one model is marked default: {marked}")
        if self.default is not None:
            if self.default not in {spec.name for spec in self.models}:
                raise ValueError(f"default model {self.default!r} is not among the models")
            if marked and marked != [self.default]:
                raise ValueError(f"default is {self.default!r} but {marked[0]!r} is marked so")
        return self

    @property
    def default_name(self) -> str:
        if self.default is not None:
            return self.default
        for spec in self.models:
            if spec.default:
                return spec.name
        return self.models[0].name


def _resolve_source(source: str | None, base_dir: Path) -> str | None:
    """A relative path is relative to the configuration file's folder."""
    if source is None or urllib.parse.urlsplit(source).scheme:
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def parse_models_file(path: Path) -> ModelsConfig:
    """Read a TOML (``.toml``) or JSON (``.json``) model configuration; relative sources are
    resolved against the file's folder. Raises ``ModelConfigError``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelConfigError(f"cannot read the model configuration {path}: {exc}") from exc
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ModelConfigError(f"model configuration {path} is not valid: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        base = path.resolve().parent
        data["models"] = [
            {**spec, "source": _resolve_source(spec.get("source"), base)}
            if isinstance(spec, dict) and "source" in spec
            else spec
            for spec in data["models"]
        ]
    try:
        return ModelsConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"model configuration {path} is not valid:\n{exc}") from exc


def builtin_models(settings: Settings) -> ModelsConfig:
    """The models served without a configuration file: RFB-320 (default; its source from
    ``model_path``, else the shared copy, else ``model_url`` pinned to ``model_sha256``) and
    slim-320 (the shared copy, else its upstream URL, pinned), both TFLite."""
    shared = settings.resolved_shared_dir()
    rfb_file = shared / DEFAULT_MODEL_FILE
    if settings.model_path is not None:
        rfb = ModelSpec(name=settings.model_name, source=str(settings.model_path.expanduser()))
    elif rfb_file.is_file():
        rfb = ModelSpec(name=settings.model_name, source=str(rfb_file))
    else:
        rfb = ModelSpec(
            name=settings.model_name, source=settings.model_url, sha256=settings.model_sha256
        )
    aliases = () if settings.model_name == DEFAULT_ALIAS else (DEFAULT_ALIAS,)
    rfb = rfb.model_copy(update={"aliases": aliases, "default": True})
    slim_file = shared / SLIM_MODEL_FILE
    if slim_file.is_file():
        slim = ModelSpec(name=SLIM_MODEL_NAME, source=str(slim_file))
    else:
        slim = ModelSpec(name=SLIM_MODEL_NAME, source=SLIM_MODEL_URL, sha256=SLIM_MODEL_SHA256)
    models = (rfb,) if settings.model_name == SLIM_MODEL_NAME else (rfb, slim)
    return ModelsConfig(models=models)


def load_models_config(settings: Settings) -> ModelsConfig:
    """The configuration of ``settings``: ``models_file`` when set, else the built-in models."""
    if settings.models_file is not None:
        return parse_models_file(settings.models_file.expanduser())
    return builtin_models(settings)
