"""``LoadedModelRegistry``: the loaded models by name and alias, with leases so that a reload
never closes a detector a request still uses.

Every request takes a lease on the current version of its model (``acquire``) and gives it back
when its unit of work ends. ``replace`` swaps in a new set of loaded models at once: requests
that start after it get the new versions; a version that is no longer current is *retired* and
closed when its last lease is given back, so calls in flight finish on the version they
started with.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from inference_service.domain import ModelDescription, ModelInfo
from inference_service.errors import NotFoundError, quote
from inference_service.ports import Detector

if TYPE_CHECKING:
    from inference_service.models.config import ModelSpec

logger = logging.getLogger(__name__)


class LoadedModel:
    """One loaded version of a model: its detector, what ``ListModels`` says of it, and how many
    requests hold it. Closed once retired and no longer held."""

    def __init__(
        self, detector: Detector, description: ModelDescription, *, spec: ModelSpec | None = None
    ) -> None:
        self.detector = detector
        self.description = description
        self.spec = spec
        """The configuration it was loaded from (a reload compares it)."""
        self._lock = threading.Lock()
        self._leases = 0
        self._retired = False
        self._closed = False

    @property
    def info(self) -> ModelInfo:
        return self.description.info

    @property
    def name(self) -> str:
        return self.description.info.name

    def lease(self) -> _Lease:
        with self._lock:
            self._leases += 1
        return _Lease(self)

    def _give_back(self) -> None:
        with self._lock:
            self._leases -= 1
            close = self._retired and self._leases == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def retire(self) -> None:
        """No new leases come (the registry no longer hands it out); close it once the last
        lease is given back (now, when none is held)."""
        with self._lock:
            self._retired = True
            close = self._leases == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _close(self) -> None:
        logger.info("closing model %s version %s", self.name, self.info.version)
        try:
            self.detector.close()
        except Exception:
            logger.exception("closing model %s failed", self.name)


class _Lease:
    """``ModelLease``: a detector held until ``release`` (idempotent)."""

    __slots__ = ("_lock", "_model", "_released")

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._released = False
        self._lock = threading.Lock()

    @property
    def detector(self) -> Detector:
        return self._model.detector

    @property
    def model(self) -> LoadedModel:
        return self._model

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._model._give_back()


@dataclasses.dataclass(frozen=True)
class _Catalog:
    models: Mapping[str, LoadedModel]
    names: Mapping[str, str]  # name or alias -> name
    default: str


def _catalog(models: Iterable[LoadedModel], default: str) -> _Catalog:
    by_name: dict[str, LoadedModel] = {}
    names: dict[str, str] = {}
    for model in models:
        for name in (model.name, *model.description.aliases):
            if name in names:
                raise ValueError(f"model name or alias {name!r} is used twice")
            names[name] = model.name
        by_name[model.name] = model
    if default not in by_name:
        raise ValueError(f"the default model {default!r} is not among the models")
    return _Catalog(models=by_name, names=names, default=default)


class LoadedModelRegistry:
    """``inference_service.ports.ModelRegistry`` over ``LoadedModel``s."""

    def __init__(self, models: Iterable[LoadedModel], *, default: str) -> None:
        self._lock = threading.Lock()
        self._catalog = _catalog(models, default)

    @classmethod
    def single(
        cls, detector: Detector, *, runtime: str = "", aliases: tuple[str, ...] = ()
    ) -> LoadedModelRegistry:
        """A registry of one detector, the default (tests, and servers given a detector)."""
        description = ModelDescription(
            info=detector.info, runtime=runtime, aliases=aliases, is_default=True
        )
        return cls([LoadedModel(detector, description)], default=detector.info.name)

    # -- lookups ---------------------------------------------------------------

    def _find(self, catalog: _Catalog, name: str) -> LoadedModel:
        if not name:
            return catalog.models[catalog.default]
        canonical = catalog.names.get(name)
        if canonical is None:
            known = ", ".join(sorted(catalog.names))
            raise NotFoundError(f"model {quote(name)} not found; this server serves: {known}")
        return catalog.models[canonical]

    def acquire(self, name: str) -> _Lease:
        with self._lock:  # with replace(): never a lease on a model already retired
            return self._find(self._catalog, name).lease()

    def describe(self, name: str) -> ModelDescription:
        catalog = self._catalog
        model = self._find(catalog, name)
        return dataclasses.replace(
            model.description, is_default=model.name == catalog.default, ready=not model.closed
        )

    def list(self) -> list[ModelDescription]:
        catalog = self._catalog
        ordered = sorted(catalog.models, key=lambda name: (name != catalog.default, name))
        return [self.describe(name) for name in ordered]

    @property
    def default(self) -> str:
        return self._catalog.default

    def loaded(self) -> dict[str, LoadedModel]:
        """The current version of every model, by name."""
        return dict(self._catalog.models)

    # -- changes ---------------------------------------------------------------

    def replace(self, models: Iterable[LoadedModel], *, default: str) -> tuple[LoadedModel, ...]:
        """Serve ``models`` from now on (all at once); versions no longer served are retired:
        closed when the calls that hold them have finished. A model object kept (the same
        ``LoadedModel``) goes on unchanged. Returns the retired versions."""
        catalog = _catalog(models, default)
        with self._lock:
            old, self._catalog = self._catalog, catalog
        kept = {id(model) for model in catalog.models.values()}
        retired = tuple(model for model in old.models.values() if id(model) not in kept)
        for model in retired:
            model.retire()
        return retired

    def close(self) -> None:
        """Retire every model (each closes once no call holds it)."""
        with self._lock:
            models = list(self._catalog.models.values())
        for model in models:
            model.retire()
