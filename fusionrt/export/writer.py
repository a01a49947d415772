"""Build a bundle in a staging directory, then publish it in one rename.

Files are written with :mod:`fusionrt.io`'s atomic writes inside a hidden staging directory next to
the target; ``manifest.json`` is written last. Publishing a new bundle renames the staging directory
onto the target path (or an empty directory there). Replacing an existing bundle is a
:class:`BundleTransaction` on it: the staged files move in under names its manifest does not list,
the staged manifest replaces the old one in one rename, and the old files are removed after. Either
way readers (and a crash at any point) see the old bundle or the new one, never a mix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import MANIFEST, is_bundle, read_manifest, sha256_file
from fusionrt.bundle.transaction import BundleTransaction, fault_point
from fusionrt.errors import BundleError
from fusionrt.export.errors import ExportError
from fusionrt.io import atomic_write_bytes, atomic_write_json, default_mode


def _check_target(target: Path) -> None:
    # Replacing a bundle is fine; replacing a directory of other files would destroy someone's data.
    if target.exists() and not (target.is_dir() and (is_bundle(target) or not any(target.iterdir()))):
        raise ExportError("out_dir", "a new path, an empty directory or an existing bundle to replace",
                          f"{target}, which holds other files")


class BundleWriter:
    """Context manager: stage files, write the manifest, :meth:`publish`; on error the staging dir is removed."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target).resolve()
        _check_target(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.staging-", dir=self.target.parent))
        os.chmod(self.path, default_mode(directory=True))

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def write_bytes(self, name: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path / name, data)

    def files(self) -> dict[str, dict[str, Any]]:
        """Size and sha256 of every staged file but the manifest."""
        return {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                for f in sorted(self.path.iterdir()) if f.is_file() and f.name != MANIFEST
                and not f.name.startswith(".")}

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Write ``manifest.json`` with the ``files`` section computed from what is staged now."""
        return atomic_write_json(self.path / MANIFEST, {**manifest, "files": self.files()})

    def publish(self) -> Path:
        """Publish the staged bundle at the target and return the target."""
        _check_target(self.target)
        fault_point("export-staged")
        if not is_bundle(self.target):
            # rename(2) replaces a missing path or an empty directory atomically.
            os.replace(self.path, self.target)
            return self.target
        try:
            read_manifest(self.target)
        except BundleError:
            return self._replace_broken()
        staged = read_manifest(self.path)
        with BundleTransaction(self.target, verify=False) as tx:
            for name in staged["files"]:
                tx.adopt(self.path / name, name)
            tx.commit(manifest=staged)
        return self.target

    def _replace_broken(self) -> Path:
        # A target whose manifest is unreadable holds no state worth keeping: swap the directory.
        old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
        os.replace(self.target, old / "bundle")
        os.replace(self.path, self.target)
        shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
