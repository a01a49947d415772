"""Export the shipped checkpoint into the packaged bundle the Answerer runs by default.

    .venv/bin/python scripts/make_small_bundle.py        # rewrites fusionrt/assets/small-bundle/
    .venv/bin/python scripts/make_small_bundle.py match  # rewrites fusionrt/assets/match-bundle/ (search)

Rerun it whenever fusionrt/assets/small/ or the exported graph form changes: tests/test_app_default.py
fails while the bundle's recorded source hashes differ from the shipped checkpoint's files. The export is
the normal one (verified against PyTorch on the shape grid before it is published); only the recorded
source path is made relative to the repository, so the packaged manifest holds no machine's path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fusionrt.app import SHIPPED_BUNDLE
from fusionrt.export import export_checkpoint
from fusionrt.export.match import export_match_checkpoint
from fusionrt.io import atomic_write_json
from fusionrt.model import SHIPPED_CHECKPOINT
from fusionrt.model.match_checkpoint import SHIPPED_MATCH_CHECKPOINT
from fusionrt.progress import progress_for
from fusionrt.runtime import MANIFEST, Bundle
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE


def main(task: str = "vqa") -> int:
    if task == "match":
        checkpoint, out = SHIPPED_MATCH_CHECKPOINT, SHIPPED_MATCH_BUNDLE
        export_match_checkpoint(checkpoint, out, exporter="legacy", progress=progress_for())
    else:
        checkpoint, out = SHIPPED_CHECKPOINT, SHIPPED_BUNDLE
        export_checkpoint(checkpoint, out, progress=progress_for())
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    # the torch backend finds the checkpoint from the repository root, or with checkpoint=SHIPPED_CHECKPOINT
    manifest["source"]["path"] = str(Path("fusionrt") / checkpoint.relative_to(checkpoint.parents[1]))
    atomic_write_json(manifest_path, manifest)
    bundle = Bundle.open(out)
    size = sum(entry["bytes"] for entry in bundle.manifest["files"].values())
    print(f"wrote {out} ({size / 1e6:.1f} MB, files {sorted(bundle.manifest['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
