"""Loading models: fetch each configured model's artifact from its source, make its detector on
its runtime, warm it up. All or nothing: a model that cannot be loaded (a bad URI, a missing
object, a checksum mismatch, an unusable artifact) fails the whole load with a message that
names it, and whatever was loaded before it is closed again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path

from inference_service.artifacts import artifact_sha256
from inference_service.domain import ModelDescription
from inference_service.models.config import ModelsConfig, ModelSpec
from inference_service.models.registry import LoadedModel
from inference_service.models.source import (
    ArchiveModelSource,
    ModelFetchError,
    model_source_for,
    public_source,
    redact_uri,
)
from inference_service.ports import Detector
from inference_service.settings import Settings

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """What loading needs besides a model's own configuration (defaults from ``Settings``)."""

    cache_dir: Path
    tflite_runtime: str = "auto"
    threads: int = 1
    score_threshold: float = 0.7
    iou_threshold: float = 0.3
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    expose_model_sources: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadOptions:
        return cls(
            cache_dir=settings.model_cache_dir.expanduser(),
            tflite_runtime=settings.tflite_runtime,
            threads=settings.model_threads,
            score_threshold=settings.score_threshold,
            iou_threshold=settings.iou_threshold,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            expose_model_sources=settings.expose_model_sources,
        )


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A fetched model artifact: its local path (``None``: a custom detector without a source)
    and its version (sha256 of the file, archive or folder)."""

    path: str | None
    version: str | None


def fetch_artifact(spec: ModelSpec, options: LoadOptions) -> Artifact:
    """Fetch (download, verify, unpack) the artifact of ``spec``. Raises ``ModelLoadError``."""
    if spec.source is None:
        return Artifact(path=None, version=spec.sha256)
    shown = redact_uri(spec.source)
    try:
        source = model_source_for(
            spec.source,
            cache_dir=options.cache_dir,
            sha256=spec.sha256,
            s3_endpoint_url=options.s3_endpoint_url,
            s3_region=options.s3_region,
        )
        path = source.fetch()
        if isinstance(source, ArchiveModelSource):
            version = source.archive_sha256
        else:
            version = spec.sha256.lower() if spec.sha256 else artifact_sha256(path)
    except (ValueError, ModelFetchError, OSError) as exc:
        raise ModelLoadError(f"model {spec.name!r} ({shown}): {exc}") from exc
    return Artifact(path=path, version=version)


def make_detector(spec: ModelSpec, artifact: Artifact, options: LoadOptions) -> Detector:
    """The detector of ``spec`` on its runtime, over the fetched ``artifact``. Blocking."""
    threads = spec.threads or options.threads
    score = spec.score_threshold or options.score_threshold
    iou = spec.iou_threshold or options.iou_threshold
    path = artifact.path
    if spec.runtime == "python":
        from inference_service.detection.python import PythonDetector

        assert spec.detector is not None
        return PythonDetector.create(
            spec.detector, path, spec.options, name=spec.name, version=artifact.version
        )
    assert path is not None
    if spec.runtime == "tflite":
        from inference_service.detection.tflite import TFLiteFaceDetector

        return TFLiteFaceDetector(
            path,
            name=spec.name,
            version=artifact.version,
            num_threads=threads,
            score_threshold=score,
            iou_threshold=iou,
            runtime=spec.interpreter or options.tflite_runtime,  # type: ignore[arg-type]
        )
    if spec.runtime == "onnx":
        from inference_service.detection.onnx import OnnxFaceDetector

        return OnnxFaceDetector(
            path,
            name=spec.name,
            version=artifact.version,
            num_threads=threads,
            score_threshold=score,
            iou_threshold=iou,
            boxes=spec.boxes,
        )
    if spec.runtime == "savedmodel":
        from inference_service.detection.savedmodel import SavedModelFaceDetector

        return SavedModelFaceDetector(
            path,
            name=spec.name,
            version=artifact.version,
            score_threshold=score,
            iou_threshold=iou,
            boxes=spec.boxes,
        )
    raise ModelLoadError(f"model {spec.name!r}: unknown runtime {spec.runtime!r}")


def _same_model(a: ModelSpec, b: ModelSpec) -> bool:
    return a.model_copy(update={"default": False}) == b.model_copy(update={"default": False})


def load_model(
    spec: ModelSpec,
    options: LoadOptions,
    *,
    current: LoadedModel | None = None,
    now: dt.datetime | None = None,
) -> LoadedModel:
    """Fetch and load one model; ``current``, its version being served, is returned as it is
    when neither its configuration nor its artifact changed. Raises ``ModelLoadError``."""
    artifact = fetch_artifact(spec, options)
    if (
        current is not None
        and current.spec is not None
        and _same_model(current.spec, spec)
        and current.info.version == artifact.version
    ):
        logger.info("model %s version %s unchanged", spec.name, artifact.version)
        return current
    shown = redact_uri(spec.source) if spec.source else ""
    try:
        detector = make_detector(spec, artifact, options)
    except ModelLoadError:
        raise
    except Exception as exc:  # an unusable artifact, a missing package, a failing factory
        raise ModelLoadError(f"model {spec.name!r} ({shown or spec.runtime}): {exc}") from exc
    try:
        warm_up = getattr(detector, "warm_up", None)
        if callable(warm_up):
            warm_up()
    except Exception as exc:
        detector.close()
        raise ModelLoadError(f"model {spec.name!r}: warm-up failed: {exc}") from exc
    description = ModelDescription(
        info=detector.info,
        runtime=str(getattr(detector, "runtime", "") or spec.runtime),
        aliases=spec.aliases,
        load_time=now or dt.datetime.now(dt.UTC),
        source=shown if options.expose_model_sources else public_source(spec.source or ""),
    )
    logger.info(
        "loaded model %s version %s (%s) from %s",
        spec.name,
        detector.info.version,
        description.runtime,
        shown or "-",
    )
    return LoadedModel(detector, description, spec=spec)


def load_models(
    config: ModelsConfig,
    options: LoadOptions,
    *,
    current: Mapping[str, LoadedModel] | None = None,
) -> list[LoadedModel]:
    """Load every model of ``config`` (reusing unchanged ones of ``current``); all or nothing:
    on a failure the models loaded by this call are closed and ``ModelLoadError`` raised."""
    current = current or {}
    loaded: list[LoadedModel] = []
    try:
        for spec in config.models:
            loaded.append(load_model(spec, options, current=current.get(spec.name)))
    except BaseException:
        reused = {id(model) for model in current.values()}
        for model in loaded:
            if id(model) not in reused:
                model.retire()
        raise
    return loaded
