"""An index whose vectors live on a Qdrant server (``--vectors URL``), through qdrant-client's URL path.

Two servers: a real one where ``FUSIONRT_QDRANT_URL`` names it (none installs on this machine: PyPI and
Debian ship no Qdrant server, only clients; see the README's Search section), and, in CI, the embedded
local mode standing behind the URL: ``QdrantClient(url=...)`` is answered by a local-mode client, so every
line of our URL path (the URL recorded in index.json, a collection of its own, the store's own search as the
first stage, writes, re-adds, removes) runs, and only the HTTP transport is not ours to test here.
Both must rank exactly as an index on the local mode over the same images does.
"""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from fusionrt.bundle.manifest import Bundle
from fusionrt.cli import main
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.index import ImageIndex
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Searcher
from fusionrt.search.store import MemoryFirstStage

qdrant_client = pytest.importorskip("qdrant_client", reason="the search extra is not installed")
SCENES = 24
QUERIES = ("a small red circle", "two blue objects", "a green square left of a yellow triangle")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("server-scenes")
    for seed in split_seeds("heldout", SCENES, start=800_000):
        Image.fromarray(render(generate_scene(seed))).save(directory / f"{seed}.png")
    return directory


@pytest.fixture(scope="module")
def local_results(scenes, tmp_path_factory):
    """The same images on the embedded local mode: what a server-backed index must return."""
    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    index, encoder = ImageIndex(tmp_path_factory.mktemp("local") / "index", bundle), ImageEncoder(bundle, threads=1)
    index.add(scenes, encoder)
    encoder.close()
    searcher = Searcher(index, threads=1, first_stage="store")
    try:
        return {q: [(h.sha256, h.score) for h in searcher.search(q, top=10, rerank=16)] for q in QUERIES}
    finally:
        searcher.close()
        index.close()


class EmbeddedBehindUrl:
    """``QdrantClient(url=...)`` answered by the local mode in a folder per URL (so the index's later opens
    find what earlier ones wrote); other calls are the real client's."""

    def __init__(self, root: Path) -> None:
        self.root, self.urls = root, []
        self.real = qdrant_client.QdrantClient

    def __call__(self, *args, url: str | None = None, **kwargs):
        if url is None:
            return self.real(*args, **kwargs)
        self.urls.append(url)
        return self.real(path=str(self.root / url.replace(":", "_").replace("/", "_")))


@pytest.fixture(params=["embedded local mode behind the URL", "a real Qdrant server"])
def server(request, monkeypatch, tmp_path):
    if request.param == "a real Qdrant server":
        url = os.environ.get("FUSIONRT_QDRANT_URL")
        if not url:
            pytest.skip("no Qdrant server here: set FUSIONRT_QDRANT_URL=http://host:6333 to run against one")
        return url, None
    fake = EmbeddedBehindUrl(tmp_path)
    monkeypatch.setattr(qdrant_client, "QdrantClient", fake)
    return "http://qdrant.invalid:6333", fake


def test_an_index_on_a_server_ranks_as_the_local_index(server, scenes, local_results, tmp_path, capsys):
    url, fake = server
    index_dir = tmp_path / "index"
    argv = ["index", "add", str(scenes), "--index", str(index_dir), "--vectors", url, "--json", "-", "-q"]
    assert main(argv) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["added"], added["images"]) == (SCENES, SCENES)
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["vectors"] == url and meta["collection"].startswith("fusionrt-images-")
    assert not (index_dir / "vectors").exists(), "a server index keeps no local vector store"
    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    index = ImageIndex(index_dir, bundle, create=False)
    try:
        assert not index.vectors.local
        searcher = Searcher(index, threads=1)
        assert not isinstance(searcher.first_stage, MemoryFirstStage), "a server is searched by the server"
        for query in QUERIES:
            hits = [(h.sha256, h.score) for h in searcher.search(query, top=10, rerank=16)]
            assert [s for s, _ in hits] == [s for s, _ in local_results[query]], query
            assert [v for _, v in hits] == pytest.approx([v for _, v in local_results[query]], abs=1e-5)
        searcher.close()
        encoder = ImageEncoder(bundle, threads=1)
        assert index.add(scenes, encoder).unchanged == SCENES  # re-adding is a no-op on the server too
        encoder.close()
        assert index.remove([next(iter(index.entries()))]) == 1 and len(index) == SCENES - 1
    finally:
        if fake is None:  # leave the real server as it was
            index.vectors.client.delete_collection(index.vectors.collection)
        index.close()
    if fake is not None:
        assert set(fake.urls) == {url}


def test_an_index_keeps_the_vectors_location_it_was_built_with(scenes, tmp_path, capsys):
    """A local index asked to add onto a server (or the reverse) is refused, not silently split in two."""
    index_dir = tmp_path / "index"
    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    ImageIndex(index_dir, bundle).close()
    assert main(["index", "add", str(scenes), "--index", str(index_dir), "--vectors", "http://qdrant.invalid:6333",
                 "-q"]) == 2
    assert "--vectors" in capsys.readouterr().err
