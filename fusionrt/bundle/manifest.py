"""Bundle directories: ONNX graphs, vocabularies and ``manifest.json``, checked on open.

``manifest.json`` is written last at export, so a directory without it is not a bundle. It lists
every file with its size and sha256; :meth:`Bundle.open` refuses a bundle whose files are missing
or altered (or are links leading outside the bundle), and a manifest of a schema version newer
than this code understands. Updates publish a new manifest in one rename
(:mod:`fusionrt.bundle.transaction`); a reader whose manifest was replaced while it verified the
files reads the new one, so it sees one state or the other, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.bundle.contract import (
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_DEPTH,
    check_depth,
    check_graphs_against_model,
    safe_bounds,
)
from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import BundleError

BUNDLE_FORMAT = "fusionrt-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FP32 = "fp32"
# What a bundle serves, recorded as the manifest's "task": the graphs it lists say how it runs. "vqa" is the
# scene world's question answering (fusion + region encoder + tokenizer); "custom" a user's fusion module.
VQA_TASK = "vqa"
CUSTOM_TASK = "custom"
# The only sub-directory a manifest may list files in (TensorRT plans, written by ``fusionrt build``).
SUBDIRS = ("engines",)


def graph_filename(graph: str, precision: str = FP32) -> str:
    """The file of ``graph`` at ``precision``: ``fusion.onnx`` for fp32, ``fusion.fp16.onnx`` otherwise."""
    return f"{graph}.onnx" if precision == FP32 else f"{graph}.{precision}.onnx"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a ``manifest.json``."""
    return (Path(path) / MANIFEST).is_file()


def is_bundle_file_name(name: str) -> bool:
    """A plain name, or ``engines/<plain name>``: never absolute, never ``..``, never deeper."""
    parts = name.split("/")
    if len(parts) == 2 and parts[0] in SUBDIRS:
        parts = parts[1:]
    leaf = parts[0]
    return len(parts) == 1 and leaf not in ("", ".", "..", MANIFEST) and "\\" not in leaf and Path(leaf).name == leaf


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed, structurally checked ``manifest.json`` of bundle directory ``path`` (no hash check)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError("bundle", "a directory with manifest.json", f"no directory at {path}")
    manifest_path = path / MANIFEST
    if manifest_path.is_symlink() and path.resolve() not in manifest_path.resolve().parents:
        raise BundleError(MANIFEST, f"a file inside the bundle {path}",
                          f"a link to {os.readlink(manifest_path)}, outside it (refused, not read)")
    if not manifest_path.is_file():
        raise BundleError(MANIFEST, f"a file in {path} (written last by fusionrt export)", "nothing")
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(MANIFEST, f"at most {MAX_MANIFEST_BYTES} bytes", f"{size} bytes (not read)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(MANIFEST, "JSON", f"unreadable content ({exc})") from exc
    except RecursionError:
        raise BundleError(MANIFEST, f"objects and lists nested at most {MAX_MANIFEST_DEPTH} deep",
                          "nesting too deep to parse") from None
    check_depth(manifest)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(MANIFEST, f"format {BUNDLE_FORMAT!r}", repr(got))
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(MANIFEST, "an integer schema_version >= 1", repr(version))
    if version > SCHEMA_VERSION:
        raise BundleError(
            MANIFEST, f"schema_version <= {SCHEMA_VERSION} (the newest this fusionrt reads)",
            f"schema_version {version}: the bundle was written by a newer fusionrt; upgrade to load it",
        )
    for key in ("files", "graphs", "model"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(MANIFEST, f"a {key!r} object", repr(manifest.get(key))[:80])
    for name, entry in manifest["files"].items():
        # File names are plain names inside the bundle (or in engines/): a manifest must not point elsewhere.
        if not is_bundle_file_name(name):
            raise BundleError(f"{MANIFEST} files", "plain file names inside the bundle (or engines/NAME)", repr(name))
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{MANIFEST} files.{name}", "an object with sha256 and bytes", repr(entry)[:80])
        size = entry.get("bytes", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"{MANIFEST} files.{name}", "bytes: a non-negative integer", repr(size)[:80])
    return manifest


def _manifest_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = (path / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


# A reader retries when a writer published a new manifest while it was checking files; more retries
# than this mean the bundle is being rewritten faster than it can be read.
_OPEN_ATTEMPTS = 5


@dataclass
class Bundle:
    """An opened (and by default hash-verified) bundle directory."""

    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, GraphSpec]

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Read ``manifest.json``; with ``verify``, check the size and sha256 of every listed file."""
        path = Path(path)
        for attempt in range(_OPEN_ATTEMPTS):
            identity = _manifest_identity(path)
            try:
                return cls._open_once(path, verify)
            except BundleError:
                if attempt == _OPEN_ATTEMPTS - 1 or identity is None or _manifest_identity(path) == identity:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_once(cls, path: Path, verify: bool) -> Bundle:
        manifest = read_manifest(path)
        graphs = {name: GraphSpec.from_dict(name, entry) for name, entry in manifest["graphs"].items()}
        check_graphs_against_model(manifest["model"], graphs)
        for graph in graphs.values():
            for precision in graph.precisions:
                safe_bounds(manifest, graph, precision)
        for name, graph in graphs.items():
            for precision, filename in graph.precisions.items():
                if filename not in manifest["files"]:
                    raise BundleError(f"{MANIFEST} graphs.{name}.precisions.{precision}",
                                      "a file listed (with its hash) under files", repr(filename))
        bundle = cls(path, manifest, graphs)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Raise :class:`BundleError` naming the first missing, resized or altered file."""
        root = self.path.resolve()
        for name, entry in self.manifest["files"].items():
            file = self.path / name
            if (file.is_symlink() or "/" in name) and file.exists() and not file.resolve().is_relative_to(root):
                # A link (or a linked engines/) would let the hash vouch for a file outside the bundle.
                raise BundleError(name, f"a file inside the bundle {self.path}",
                                  f"a link to {file.resolve()}, outside it (refused, not read)")
            try:
                if not file.is_file():
                    raise FileNotFoundError(file)
                size = file.stat().st_size
                if "bytes" in entry and size != entry["bytes"]:
                    raise BundleError(name, f"{entry['bytes']} bytes as in {MANIFEST}",
                                      f"{size} bytes (truncated or altered file)")
                digest = sha256_file(file)
            except FileNotFoundError as exc:  # also when a writer removed it while we checked
                raise BundleError(name, f"a file of the bundle at {file}", "nothing (missing file)") from exc
            if digest != entry["sha256"]:
                raise BundleError(name, f"sha256 {entry['sha256']} as in {MANIFEST}",
                                  f"sha256 {digest} (altered file)")

    @property
    def model(self) -> dict[str, Any]:
        """The model section: contract sizes (vocab_size, visual_dim, max_* ...) and the config if known."""
        return self.manifest["model"]

    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            raise BundleError("graph", f"one of this bundle's graphs {sorted(self.graphs)}", repr(name))
        return self.graphs[name]

    def graph_path(self, name: str, precision: str = FP32) -> Path:
        """The file of graph ``name`` at ``precision``, as the manifest lists it."""
        spec = self.graph(name)
        if precision not in spec.precisions:
            hint = ""
            if (self.path / graph_filename(name, precision)).exists():
                hint = f" ({graph_filename(name, precision)} exists but the manifest does not list it)"
            raise BundleError("precision", f"one of {sorted(spec.precisions)} for graph {name!r} of this bundle",
                              repr(precision) + hint)
        return self.path / spec.precisions[precision]

    @property
    def task(self) -> str:
        """The manifest's ``task``; a bundle written before tasks were recorded is "vqa" when it holds the
        scene world's region encoder and tokenizer, else "custom"."""
        recorded = self.manifest.get("task")
        if isinstance(recorded, str) and recorded:
            return recorded
        scene_world = "region_encoder" in self.graphs and "tokenizer.json" in self.manifest["files"]
        return VQA_TASK if scene_world else CUSTOM_TASK

    def file(self, name: str) -> Path:
        """A file the manifest lists (for example ``tokenizer.json``), also when an update interrupted by a
        crash left it under a fresh name (``calibration.1a2b3c4d.npz``, listed with ``"logical": name``)."""
        files = self.manifest["files"]
        if name in files:
            return self.path / name
        for on_disk, entry in files.items():
            if entry.get("logical") == name:
                return self.path / on_disk
        raise BundleError(name, f"a file listed in {MANIFEST} of {self.path}",
                          f"a bundle without it (files: {sorted(files)})")
