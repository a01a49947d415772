"""Export the shipped caption checkpoint into the packaged bundle the Captioner runs by default.

    .venv/bin/python scripts/make_caption_bundle.py      # rewrites fusionrt/assets/caption-bundle/

Rerun it whenever fusionrt/assets/caption-small/ or the exported graph form changes: tests/test_caption_app.py
fails while the bundle's recorded source hashes differ from the shipped checkpoint's files. The export is the
normal one (verified against PyTorch on the B x P x S x M grid before it is published); only the recorded
source path is made relative to the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fusionrt.bundle.manifest import MANIFEST, Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE
from fusionrt.export.caption import export_caption
from fusionrt.io import atomic_write_json
from fusionrt.model.caption_checkpoint import SHIPPED_CAPTION_CHECKPOINT
from fusionrt.progress import progress_for


def main() -> int:
    export_caption(SHIPPED_CAPTION_CHECKPOINT, SHIPPED_CAPTION_BUNDLE, progress=progress_for())
    manifest_path = SHIPPED_CAPTION_BUNDLE / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    root = SHIPPED_CAPTION_CHECKPOINT.parents[1]
    manifest["source"]["path"] = str(Path("fusionrt") / SHIPPED_CAPTION_CHECKPOINT.relative_to(root))
    atomic_write_json(manifest_path, manifest)
    bundle = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    size = sum(entry["bytes"] for entry in bundle.manifest["files"].values())
    print(f"wrote {SHIPPED_CAPTION_BUNDLE} ({size / 1e6:.1f} MB, files {sorted(bundle.manifest['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
