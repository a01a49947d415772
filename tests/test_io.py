import os
import stat

import pytest

from fusionrt.io import atomic_path, atomic_write_json


def test_atomic_write_uses_the_umask_not_private_temp_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_leaves_neither_target_nor_temp_file(tmp_path):
    target = tmp_path / "b.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
