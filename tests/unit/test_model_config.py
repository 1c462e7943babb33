"""The model configuration: the file formats, what is refused, and the built-in models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.model_fixtures import write_models_toml

from inference_service.models.config import (
    ModelConfigError,
    ModelsConfig,
    ModelSpec,
    builtin_models,
    load_models_config,
    parse_models_file,
)
from inference_service.settings import DEFAULT_MODEL_SHA256, SLIM_MODEL_SHA256, Settings


def test_toml_with_relative_sources(tmp_path: Path) -> None:
    path = write_models_toml(
        tmp_path / "models.toml",
        [
            {"name": "a", "source": "sub/a.tflite", "aliases": ["x"]},
            {"name": "b", "runtime": "onnx", "source": "s3://bucket/b.onnx", "default": True},
            {"name": "c", "runtime": "python", "detector": "pkg.mod:make", "options": {"k": 1}},
        ],
    )
    config = parse_models_file(path)
    assert [spec.name for spec in config.models] == ["a", "b", "c"]
    assert config.models[0].source == str(tmp_path / "sub" / "a.tflite")
    assert config.models[1].source == "s3://bucket/b.onnx"
    assert config.default_name == "b"
    assert config.models[2].options == {"k": 1}


def test_json_and_an_explicit_default(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "default": "b",
                "models": [{"name": "a", "source": "/a"}, {"name": "b", "source": "file:///b"}],
            }
        )
    )
    assert parse_models_file(path).default_name == "b"
    path.write_text(json.dumps({"models": [{"name": "a", "source": "/a"}]}))
    assert parse_models_file(path).default_name == "a"  # the first


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "at least 1"),
        ([{"name": "a"}], "needs a `source`"),
        ([{"name": "a", "source": "https://h/a.tflite"}], "needs a sha256 pin"),
        ([{"name": "a", "source": "/a"}, {"name": "b", "source": "/b", "aliases": ["a"]}], "twice"),
        ([{"name": "a", "runtime": "python"}], "needs `detector`"),
        ([{"name": "a", "runtime": "python", "detector": "no-colon"}], "pattern"),
        ([{"name": "a", "source": "/a", "detector": "m:f"}], "for runtime python only"),
        ([{"name": "a", "runtime": "onnx", "source": "/a", "interpreter": "litert"}], "tflite"),
        ([{"name": "a b", "source": "/a"}], "pattern"),
        ([{"name": "a", "source": "/a", "sha256": "xyz"}], "pattern"),
        ([{"name": "a", "source": "/a", "colour": "red"}], "Extra inputs"),
        ([{"name": "a", "source": "/a", "runtime": "pytorch"}], "runtime"),
        (
            [
                {"name": "a", "source": "/a", "default": True},
                {"name": "b", "source": "/b", "default": True},
            ],
            "more than one",
        ),
    ],
)
def test_invalid_configurations_are_refused(tmp_path: Path, models, message: str) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": models}))
    with pytest.raises(ModelConfigError, match=message):
        parse_models_file(path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="cannot read"):
        parse_models_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[models]\nname=")
    with pytest.raises(ModelConfigError, match="not valid"):
        parse_models_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="not among"):
        ModelsConfig(default="z", models=(ModelSpec(name="a", source="/a"),))


def test_builtin_models_from_the_shared_folder(shared_dir: Path) -> None:
    config = builtin_models(Settings(shared_dir=shared_dir))
    rfb, slim = config.models
    assert config.default_name == rfb.name == "ultraface-rfb-320"
    assert rfb.aliases == ("face-detector",)
    assert rfb.source == str(
        shared_dir / "models/tflite/version-RFB-320_without_postprocessing.tflite"
    )
    assert slim.name == "ultraface-slim-320"
    assert slim.source.endswith("version-slim-320_without_postprocessing.tflite")


def test_builtin_models_without_a_shared_folder_are_pinned_downloads(tmp_path: Path) -> None:
    config = load_models_config(Settings(shared_dir=tmp_path))
    rfb, slim = config.models
    assert rfb.source.startswith("https://") and rfb.sha256 == DEFAULT_MODEL_SHA256
    assert slim.source.startswith("https://") and slim.sha256 == SLIM_MODEL_SHA256


def test_builtin_default_from_model_path_and_name(tmp_path: Path) -> None:
    config = builtin_models(
        Settings(shared_dir=tmp_path, model_path=tmp_path / "m.tflite", model_name="face-detector")
    )
    assert config.models[0].source == str(tmp_path / "m.tflite")
    assert config.models[0].name == "face-detector" and config.models[0].aliases == ()


def test_models_file_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_models_toml(tmp_path / "m.toml", [{"name": "only", "source": "/x"}])
    monkeypatch.setenv("INFERENCE_MODELS_FILE", str(path))
    assert [spec.name for spec in load_models_config(Settings()).models] == ["only"]
