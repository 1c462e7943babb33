"""``PythonDetector``: detectors of your own, in Python (``runtime = "python"``, a model's
``detector = "package.module:factory"``). ListModels reports them as ``python/<factory>``.

The factory is called as ``factory(path, **options)``: ``path`` is the local path of the
model's fetched ``source`` (a file or folder; ``None`` without a source) and ``options`` the
model's ``options`` table. It returns an object with

* ``detect(image) -> ModelOutput``: ``image`` an RGB ``uint8`` array (H, W, 3), EXIF-oriented;
  boxes in its pixels, best score first; called from several threads at once;
* optionally ``close()`` (when the model is unloaded) and ``warm_up()`` (once, at load).

The server names it (the model's ``name``) and versions it (the sha256 of its source, else the
``version`` option, else the object's own ``info.version``). docs/operations.md ("Your own
detector") has an example.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from inference_service.domain import ModelInfo, ModelOutput
from inference_service.errors import ModelNotReadyError


def load_factory(import_path: str) -> Callable[..., Any]:
    """``package.module:attribute``, imported. Raises ``ValueError`` when it cannot be."""
    module_name, _, attribute = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} (detector {import_path}): {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"{import_path} is not a callable in {module_name}")
    return cast(Callable[..., Any], factory)


class PythonDetector:
    """A ``Detector`` over the object a ``python`` model's factory made: named and versioned by
    the server."""

    def __init__(self, inner: Any, *, name: str, version: str, runtime: str) -> None:
        if not callable(getattr(inner, "detect", None)):
            raise ValueError(f"the detector of model {name!r} has no detect(image) method")
        self._inner = inner
        self._closed = False
        self._info = ModelInfo(name=name, version=version)
        self.runtime = runtime

    @classmethod
    def create(
        cls,
        import_path: str,
        path: str | None,
        options: Mapping[str, Any],
        *,
        name: str,
        version: str | None,
    ) -> PythonDetector:
        factory = load_factory(import_path)
        options = dict(options)
        option_version = options.pop("version", None)
        inner = factory(path, **options)
        inner_info = getattr(inner, "info", None)
        resolved = (
            version
            or (str(option_version) if option_version is not None else None)
            or getattr(inner_info, "version", None)
            or "unversioned"
        )
        return cls(inner, name=name, version=resolved, runtime=f"python/{import_path}")

    @property
    def info(self) -> ModelInfo:
        return self._info

    def detect(self, image: np.ndarray) -> ModelOutput:
        if self._closed:
            raise ModelNotReadyError("the model is closed")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        output = self._inner.detect(image)
        if not isinstance(output, ModelOutput):
            raise TypeError(f"detector {self._info.name} returned {type(output).__name__}")
        return output

    def warm_up(self) -> None:
        warm_up = getattr(self._inner, "warm_up", None)
        if callable(warm_up):
            warm_up()

    def close(self) -> None:
        self._closed = True
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()
