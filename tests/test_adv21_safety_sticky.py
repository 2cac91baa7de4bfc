"""An output that another user's file occupies in a sticky folder (/tmp) is refused before any work.

Found by the file-safety review (2026-11-29): in a sticky folder only a file's owner (or the folder's, or root)
may rename over it. The folder probe creates and removes a temp file of our own, which is allowed, so a
`-o /tmp/o.onnx` left there by another user passed the checks; the run collapsed and verified the model and
only then failed at the rename (EPERM). The process's user is simulated (os.geteuid), not switched.
"""
from __future__ import annotations

import os

import onnx
import pytest

from collapse_passes.errors import CollapseError
from collapse_passes.outputs import checked_output_file
from test_file_safety import cli, small_model

OTHER = 4_000_000   # a uid that owns neither the folder nor the file


@pytest.fixture
def sticky(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    onnx.save(small_model(), tmp_path / "m.onnx")
    (folder / "o.onnx").write_bytes(b"another user's file")
    return folder


def test_another_users_output_in_a_sticky_folder_is_refused_before_any_work(tmp_path, sticky, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: OTHER)
    monkeypatch.setattr("collapse_passes.api.collapse", lambda *a, **k: pytest.fail("the run started"))
    rc, _, err = cli("m.onnx", "-o", "shared/o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "sticky" in err and "another user" in err, err
    assert (sticky / "o.onnx").read_bytes() == b"another user's file"
    assert sorted(os.listdir(sticky)) == ["o.onnx"]
    with pytest.raises(CollapseError, match="sticky"):   # the library writers make the same check
        checked_output_file(sticky / "o.onnx")


def test_own_file_or_a_new_name_in_a_sticky_folder_is_fine(sticky, monkeypatch):
    assert checked_output_file(sticky / "o.onnx") == sticky / "o.onnx"   # this process owns the file
    monkeypatch.setattr(os, "geteuid", lambda: OTHER)
    assert checked_output_file(sticky / "new.onnx") == sticky / "new.onnx"
