"""A converter's output directory replaces only an earlier output of its own: a directory holding anything else, a
file or a link is refused and left as it was, and a failed move puts the old directory back."""

from __future__ import annotations

import pathlib

import pytest

from voicepipe.errors import UserError
from voicepipe.outfile import replace_dir


def built_output(parent: pathlib.Path, text: str) -> pathlib.Path:
    built = parent / f".built-{text}"
    built.mkdir()
    (built / "config.json").write_text(text)
    (built / "weights.safetensors").write_text(text)
    return built


def test_a_new_target_and_an_earlier_output_are_replaced_leaving_nothing_behind(tmp_path) -> None:
    target = tmp_path / "out"
    assert replace_dir(built_output(tmp_path, "one"), target) == target
    assert replace_dir(built_output(tmp_path, "two"), target) == target
    assert (target / "config.json").read_text() == "two" and (target / "weights.safetensors").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_directory_holding_other_files_a_file_or_a_link_is_refused_and_kept(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt.*choose a new or empty directory"):
        replace_dir(built_output(tmp_path, "a"), home)
    assert (home / "notes.txt").read_text() == "mine" and sorted(p.name for p in home.iterdir()) == ["notes.txt"]

    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(UserError, match="not a directory"):
        replace_dir(built_output(tmp_path, "b"), file)
    assert file.read_text() == "mine"

    link = tmp_path / "link"
    link.symlink_to(home)
    with pytest.raises(UserError, match="not a directory"):
        replace_dir(built_output(tmp_path, "c"), link)
    assert link.is_symlink() and (home / "notes.txt").read_text() == "mine"


def test_a_failed_move_puts_the_earlier_output_back(tmp_path, monkeypatch) -> None:
    target = replace_dir(built_output(tmp_path, "old"), tmp_path / "out")
    built = built_output(tmp_path, "new")
    real_rename = pathlib.Path.rename

    def rename(self: pathlib.Path, dest):  # the disk fails while the new output moves into place
        if self == built:
            raise OSError(5, "Input/output error")
        return real_rename(self, dest)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        replace_dir(built, target)
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".built-new", "out"]
