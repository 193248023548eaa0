"""Atomic writes: complete files or none, with the permissions a plain write would give."""

import os
import stat

import pytest

from sae_ception.utils.io import atomic_dir, read_json, write_json, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_get_the_usual_mode_not_owner_only(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_text(tmp_path / "page.html", "<p>hi</p>")
        with atomic_dir(tmp_path / "ckpt") as folder:
            (folder / "w.bin").write_bytes(b"0")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "page.html") == 0o644
    assert _mode(tmp_path / "ckpt") == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.json", {"x": object()})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
