"""Add files, precisions and sections to an existing bundle's ``manifest.json``, atomically.

The bundle's files are written first (each atomically); the manifest is rewritten last with the new
files' size and sha256, so a reader sees either the old bundle or the new one with verified hashes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrt.io import atomic_write_json
from fusionrt.runtime.bundle import MANIFEST, Bundle, sha256_file


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's ``files`` entry of ``path``: sha256 and size."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def update_manifest(bundle_dir: str | Path, *, files: Sequence[str] = (),
                    precisions: Mapping[str, Mapping[str, str]] | None = None,
                    sections: Mapping[str, Any] | None = None) -> Bundle:
    """Register ``files`` (plain names inside the bundle), ``precisions`` (graph -> precision -> file) and
    top-level ``sections``; rewrite ``manifest.json`` atomically and return the re-opened bundle."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    for name in files:
        manifest["files"][name] = file_entry(bundle_dir / name)
    for graph, entries in (precisions or {}).items():
        manifest["graphs"][graph].setdefault("precisions", {}).update(entries)
    for key, value in (sections or {}).items():
        manifest[key] = value
    atomic_write_json(bundle_dir / MANIFEST, manifest)
    return Bundle.open(bundle_dir)
