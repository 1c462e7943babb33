"""Which files the client sends, and the ids it gives them (``inference_client``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference_client.files import find_images, input_id

VALID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def test_ids_are_relative_paths_with_slashes_as_tildes() -> None:
    assert input_id("photos/2024/a.jpg") == "photos~2024~a.jpg"
    assert input_id("a.jpg", prefix="run1-") == "run1-a.jpg"


@pytest.mark.parametrize(
    "relative", ["my photo.jpg", "été/b.png", "x" * 200 + ".jpg", "a+b/c d.jpg"]
)
def test_other_paths_get_valid_stable_distinct_ids(relative: str) -> None:
    made = input_id(relative)
    assert VALID.fullmatch(made), made
    assert made == input_id(relative)
    assert made != input_id(relative.replace(".", "_", 1))


def test_paths_that_sanitize_alike_still_get_distinct_ids() -> None:
    assert input_id("a b.jpg") != input_id("a_b.jpg")
    assert input_id("a b.jpg") != input_id("a-b.jpg")


def test_folders_are_searched_recursively_for_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.JPG", "in/sub/b.webp", "in/notes.txt", "in/sub/c.tiff", "solo.dat"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    found = list(find_images([Path("in"), Path("solo.dat"), Path("in/a.JPG")]))
    assert [f.relative for f in found] == ["in/a.JPG", "in/sub/b.webp", "in/sub/c.tiff", "solo.dat"]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(find_images([tmp_path / "nope"]))
