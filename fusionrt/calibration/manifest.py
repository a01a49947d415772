"""Add files, precisions and sections to an existing bundle's ``manifest.json``, atomically.

Each change is one :class:`fusionrt.runtime.transaction.BundleTransaction`: under the bundle's lock,
published by one rename of the manifest, so a reader sees the old bundle or the new one with
verified hashes. New code writes its files through ``tx.new_file(name)`` (a name no current manifest
lists, so the live bundle is never touched before the rename); :func:`update_manifest` registers
files the caller already wrote and is kept for callers that do their own writing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.transaction import BundleLockedError, BundleTransaction, file_entry

__all__ = ["BundleLockedError", "BundleTransaction", "file_entry", "update_manifest"]


def update_manifest(bundle_dir: str | Path, *, files: Sequence[str] = (),
                    precisions: Mapping[str, Mapping[str, str]] | None = None,
                    sections: Mapping[str, Any] | None = None) -> Bundle:
    """Register ``files`` (plain names inside the bundle), ``precisions`` (graph -> precision -> file) and
    top-level ``sections``; publish ``manifest.json`` atomically under the bundle's lock and return the
    re-opened bundle. The bundle is not re-verified before the update (the listed files may just have
    been rewritten in place by the caller); the returned bundle is."""
    with BundleTransaction(bundle_dir, verify=False) as tx:
        return tx.commit(files=files, precisions=precisions, sections=sections)
