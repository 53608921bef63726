"""groupdiff.atomic: a file or folder appears complete under its name, or not at all."""
from __future__ import annotations

import json

import numpy as np
import pytest

from groupdiff.atomic import (atomic_dir, atomic_path, atomic_write, temp_prefix, write_json_atomic,
                              write_text_atomic)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_success_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"  # parent folders are created
    write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": 2, "b": 1}, indent=2)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and _leftovers(path.parent) == []


def test_error_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_atomic_path_keeps_the_suffix_for_savers_that_read_it(tmp_path):
    path = tmp_path / "stats.npz"
    with atomic_path(path) as tmp:
        assert tmp.name.startswith(temp_prefix(path)) and tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))  # np.savez would append .npz to a name without it
    assert np.load(path)["x"].tolist() == [0, 1, 2] and _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "never.txt"):
            pass


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("x")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("y")
        assert not (final / "new").exists()
    assert sorted(p.name for p in final.iterdir()) == ["new"] and _leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "partial").write_text("z")
            raise ValueError
    assert sorted(p.name for p in final.iterdir()) == ["new"] and _leftovers(tmp_path) == []
