"""Hostile input, class by class: what a careless or hostile user sends, through every operation that takes it.

Each class is a table of CASES and a table of OPERATIONS; every operation runs on every case (pytest
parametrises the product). An operation either succeeds with a sane result (finite outputs, an answer of
the vocabulary) or raises a typed :class:`fusionrt.errors.FusionrtError`; a CLI command exits 2 with one
line on stderr and no traceback. Nothing else (an untyped exception, a NaN, a traceback) holds.

A new command adds its operations to the tables it takes input from (captioning: IMAGE_OPERATIONS and
QUESTION_OPERATIONS; search/index: IMAGE_OPERATIONS and BUNDLE_OPERATIONS; every CLI command: CLI_CASES).
Triton requests are the same classes over the wire (tests/test_triton_server.py, test_triton_supervise.py);
races and SIGKILL of writers are tests/test_properties_concurrency.py and tests/test_crash_bundle.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hardening_support import every_precision_bundle, every_precision_model, png_bomb, png_header_only
from hardening_support import feed as tiny_feed
from PIL import Image

from fusionrt.app import SHIPPED_BUNDLE, Answerer
from fusionrt.caption.captioner import Captioner
from fusionrt.cli import main
from fusionrt.data.images import load_image
from fusionrt.data.world import generate_scene, render
from fusionrt.errors import FusionrtError, ImageError, InputError, QuestionError
from fusionrt.runtime import Bundle, Session
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.index import ImageIndex
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Matcher, Searcher
from fusionrt.serve.answering import image_from_bytes, prepare, question_from_bytes

ROOT = Path(__file__).resolve().parents[1]
SCENE_SEED = 5
VALID_QUESTION = "How many objects are there?"


def held(operation, *args) -> object:
    """Run ``operation``; a typed error is a held case too (returned, not raised)."""
    try:
        return operation(*args)
    except FusionrtError as exc:
        return exc


# ---------------------------------------------------------------- session feeds (backend x precision)

PATHS = [("onnxruntime", p) for p in ("fp32", "fp16", "int8", "int8-cpu")] + \
        [("openvino", p) for p in ("fp32", "fp16", "int8", "int8-cpu")] + [("torch", "fp32")]


def _masked_nan(f):
    data = f["visual_feats"].copy()
    data[0, 0, 0] = np.nan
    return {**f, "visual_feats": np.ma.masked_array(data, mask=np.isnan(data))}


FEED_CASES = {
    # name -> (how to spoil a valid feed, whether the spoilt feed is still valid)
    "valid": (lambda f: f, True),
    "nan": (lambda f: {**f, "visual_feats": np.full_like(f["visual_feats"], np.nan)}, False),
    "inf": (lambda f: {**f, "visual_feats": np.full_like(f["visual_feats"], np.inf)}, False),
    "6e4 (past fp16)": (lambda f: {**f, "visual_feats": np.full_like(f["visual_feats"], 6e4)}, None),
    "3e38 (near fp32 max)": (lambda f: {**f, "visual_feats": np.full_like(f["visual_feats"], 3e38)}, None),
    "masked array with NaN under the mask": (_masked_nan, False),
    "float64": (lambda f: {**f, "visual_feats": f["visual_feats"].astype(np.float64)}, False),
    "big-endian float32": (lambda f: {**f, "visual_feats": f["visual_feats"].astype(">f4")}, False),
    "id -1": (lambda f: {**f, "input_ids": np.where(f["text_mask"], -1, 0)}, False),
    "id = vocab size": (lambda f: {**f, "input_ids": np.where(f["text_mask"], 50, 0)}, False),
    "left padding": (lambda f: {**f, "text_mask": f["text_mask"][:, ::-1].copy()}, False),
    "T over max": (lambda f: {**f, "input_ids": np.ones((2, 17), np.int64),
                              "text_mask": np.ones((2, 17), bool)}, False),
    "rank 2 visual_feats": (lambda f: {**f, "visual_feats": f["visual_feats"][:, 0]}, False),
    "a list": (lambda f: {**f, "visual_feats": f["visual_feats"].tolist()}, False),
    "None": (lambda f: {**f, "visual_mask": None}, False),
    "extra input": (lambda f: {**f, "extra": np.zeros(1)}, False),
    "not a mapping": (lambda f: list(f.values()), False),
}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    bundle = Bundle.open(every_precision_bundle(tmp_path_factory))
    opened = {}

    def session(backend: str, precision: str) -> Session:
        if (backend, precision) not in opened:
            options = {"module": every_precision_model()} if backend == "torch" else {}
            opened[backend, precision] = Session(bundle, backend, precision=precision, **options)
        return opened[backend, precision]

    yield session
    for session in opened.values():
        session.close()


@pytest.mark.parametrize("case", list(FEED_CASES))
@pytest.mark.parametrize(("backend", "precision"), PATHS)
def test_session_feeds(sessions, backend, precision, case):
    pytest.importorskip({"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}[backend])
    spoil, valid = FEED_CASES[case]
    result = held(sessions(backend, precision).run, spoil(tiny_feed()))
    if valid:
        assert isinstance(result, dict), result
    if isinstance(result, dict):
        assert valid is not False, f"an invalid feed was run: {case}"
        assert all(np.isfinite(v).all() for v in result.values()), "non-finite outputs returned"
    else:
        assert isinstance(result, InputError), result


# ---------------------------------------------------------------- images


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _scene() -> np.ndarray:
    return render(generate_scene(SCENE_SEED))


def _gray16() -> bytes:
    gray = _scene().astype(np.float64) @ [0.299, 0.587, 0.114]
    return encoded(Image.fromarray(np.round(gray * 257).astype(np.uint16)))


IMAGE_CASES = {
    # name -> (bytes, an array or another object; whether the scene's answer must come back)
    "rgb scene": (lambda: encoded(Image.fromarray(_scene())), True),
    "rgba scene": (lambda: encoded(Image.fromarray(_scene()).convert("RGBA")), True),
    # 735 colors into a 256-color palette is lossy: some answer must come back, not necessarily the scene's.
    "palette scene": (lambda: encoded(Image.fromarray(_scene()).convert("P")), "any"),
    "16-bit grayscale scene": (_gray16, True),
    "12000x12000 bomb (17 KB)": (lambda: png_bomb(12000), False),
    "30000x30000 header": (lambda: png_header_only(30000, 30000), False),
    "64x64": (lambda: encoded(Image.fromarray(_scene()[:64, :64])), False),
    "truncated png": (lambda: encoded(Image.fromarray(_scene()))[:300], False),
    "not an image": (lambda: b"GIF89a but not really", False),
    "empty file": (lambda: b"", False),
    "float array": (lambda: _scene().astype(np.float32), False),
    "2-d array": (lambda: _scene()[:, :, 0], False),
    "None": (lambda: None, False),
}


@pytest.fixture(scope="module")
def answerer():
    return Answerer()


VALID_QUERY = "a small red circle"  # scene SCENE_SEED shows one


class Kept:
    """A shared object handed to a CLI command in place of the one it would open (``close`` does nothing):
    the command's own argument handling and error reporting run; its sessions are opened once per module."""

    def __init__(self, target) -> None:
        self._target = target

    def __getattr__(self, name):
        return getattr(self._target, name)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def readers(answerer, tmp_path_factory):
    """Every reader of user input, opened once: the VQA answerer, the matcher, the captioner, a searcher over
    a four-scene index (shares the matcher's sessions' bundle), and an index with its image encoder."""
    from types import SimpleNamespace

    from fusionrt.cli.index import render_scenes

    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    scenes = tmp_path_factory.mktemp("hostile-search-scenes")
    render_scenes(str(scenes), 4)
    encoder = ImageEncoder(bundle, threads=1)
    built = ImageIndex(tmp_path_factory.mktemp("hostile-search") / "index", bundle)
    built.add(scenes, encoder)
    searcher = Searcher(built, threads=1)
    captioner = Captioner()
    found = SimpleNamespace(answerer=answerer, matcher=searcher, searcher=searcher, captioner=captioner,
                            encoder=encoder, index=built, caption=captioner.caption(_scene()),
                            folders=tmp_path_factory.mktemp("hostile-index-add"))
    yield found
    searcher.close()
    built.close()
    encoder.close()


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """Run a CLI command in process: (status, stdout, stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


class CliRefused(InputError):
    """What a CLI command's exit 2 stands for in these tables: a typed refusal (its one line is checked)."""

    def __init__(self, line: str) -> None:
        super().__init__("CLI", "exit 0", line.strip())


def _cli_result(argv: list[str]):
    """A CLI command's output on success; a refusal (exit 2, exactly one line, no traceback) as an error."""
    status, out, err = _cli(argv)
    assert "Traceback" not in err, err
    if status == 2:
        assert len(err.strip().splitlines()) == 1, err
        raise CliRefused(err)
    assert status == 0, (status, err)
    return out, err


def _one_file_folder(r, path) -> Path:
    """A fresh folder holding the case's file as x.png (or nothing, for a path that is no file)."""
    folder = r.folders / f"case{len(list(r.folders.iterdir()))}"
    folder.mkdir()
    if Path(path).is_file():
        shutil.copy(path, folder / "x.png")
    return folder


def _index_add(r, path, data):
    if not isinstance(path, Path):
        pytest.skip("index add reads files")
    return r.index.add(_one_file_folder(r, path), r.encoder)


def _cli_index_add(r, path, data, monkeypatch):
    if not isinstance(path, Path):
        pytest.skip("index add reads files")
    monkeypatch.setattr("fusionrt.cli.index.ImageEncoder", lambda *a, **k: Kept(r.encoder))
    out, err = _cli_result(["index", "add", str(_one_file_folder(r, path)), "--index",
                            str(r.folders / f"index{len(list(r.folders.iterdir()))}"), "--json", "-", "-q"])
    return {**json.loads(out), "stderr": err}


def _cli_match(r, path, data, monkeypatch):
    if not isinstance(path, Path):
        pytest.skip("the CLI reads files")
    monkeypatch.setattr("fusionrt.cli.match.Matcher", lambda *a, **k: Kept(r.matcher))
    return float(_cli_result(["match", str(path), VALID_QUERY])[0])


def _cli_caption(r, path, data, monkeypatch):
    if not isinstance(path, Path):
        pytest.skip("the CLI reads files")
    monkeypatch.setattr("fusionrt.cli.caption.Captioner", lambda *a, **k: Kept(r.captioner))
    return _cli_result(["caption", str(path)])[0].strip()


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-images")
    made = {}
    for name, (make, _) in IMAGE_CASES.items():
        value = make()
        if isinstance(value, bytes):
            path = folder / f"{len(made)}.png"
            path.write_bytes(value)
            made[name] = (path, value)
        else:
            made[name] = (value, value)
    made["missing file"] = (folder / "missing.png", None)
    made["a directory"] = (folder, None)
    return made


IMAGE_OPERATIONS = {
    # name -> operation(readers, path or array, bytes or None[, monkeypatch])
    "Answerer.ask": lambda r, path, data: r.answerer.ask(path, VALID_QUESTION)[0],
    "Answerer.ask_many": lambda r, path, data: r.answerer.ask_many([(path, VALID_QUESTION)])[0][0],
    "load_image": lambda r, path, data: load_image(path),
    "triton image_from_bytes": lambda r, path, data: image_from_bytes(data) if data is not None or path is None
    else pytest.skip("no bytes for this case"),
    "Matcher.match": lambda r, path, data: r.matcher.match(path, VALID_QUERY),
    "Captioner.caption": lambda r, path, data: r.captioner.caption(path),
    "ImageIndex.add": _index_add,
    "fusionrt match": _cli_match,
    "fusionrt caption": _cli_caption,
    "fusionrt index add": _cli_index_add,
}
COLOUR_READERS = {"Matcher.match", "fusionrt match", "Captioner.caption", "fusionrt caption"}
NEEDS_MONKEYPATCH = {"fusionrt match", "fusionrt caption", "fusionrt index add"}


def _check_index_add(result, valid, path) -> None:
    """Index add leaves out an unreadable file (named in ``skipped``) and indexes the rest; never raises."""
    assert not isinstance(result, Exception), result
    report = result if isinstance(result, dict) else {"added": result.added, "unchanged": result.unchanged,
                                                      "skipped": result.skipped}
    if valid:
        assert report["added"] + report["unchanged"] == 1 and not report["skipped"], report
    else:
        assert report["added"] == 0, report
        if Path(path).is_file():  # the case's file was copied in: it is named, with why
            assert len(report["skipped"]) == 1, report
            if isinstance(result, dict):
                assert result["stderr"].count("skipped") == 1 and "Traceback" not in result["stderr"]


@pytest.mark.parametrize("operation", list(IMAGE_OPERATIONS))
@pytest.mark.parametrize("case", [*IMAGE_CASES, "missing file", "a directory"])
def test_images(readers, image_inputs, monkeypatch, case, operation):
    path, data = image_inputs[case]
    extra = (monkeypatch,) if operation in NEEDS_MONKEYPATCH else ()
    result = held(IMAGE_OPERATIONS[operation], readers, path, data, *extra)
    valid = IMAGE_CASES.get(case, (None, False))[1]
    if operation in ("ImageIndex.add", "fusionrt index add"):
        _check_index_add(result, valid, path)
    elif valid:
        assert not isinstance(result, Exception), result
        if case == "16-bit grayscale scene" and operation in COLOUR_READERS:
            valid = "any"  # gray: the count survives, "red" and the caption's colours do not
        if operation in ("Matcher.match", "fusionrt match"):
            assert 0.0 <= result <= 1.0 and (result > 0.5 or valid == "any"), result
        elif operation in ("Captioner.caption", "fusionrt caption"):
            assert result == readers.caption or (valid == "any" and result), result
        elif isinstance(result, str):
            assert result == str(len(generate_scene(SCENE_SEED).objects)) or valid == "any"
        else:
            assert result.shape == (128, 128, 3)
    else:
        assert isinstance(result, CliRefused if operation.startswith("fusionrt") else ImageError), result


def test_a_decompression_bomb_is_refused_before_it_is_decoded(image_inputs):
    """The 12000x12000 bomb made `fusionrt ask` reach 1.66 GB RSS; refused from its header, the child
    process stays at the size of the interpreter and the runtime."""
    path, _ = image_inputs["12000x12000 bomb (17 KB)"]
    # VmHWM (peak RSS of this process image): ru_maxrss would carry over the forking pytest's peak.
    code = ("import sys\nfrom fusionrt.cli import main\nstatus = main(['ask', sys.argv[1], 'How many objects are "
            "there?'])\npeak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(peak, status)")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    rss_kb, status = (int(v) for v in run.stdout.split())
    assert status == 2 and "12000x12000" in run.stderr and "Traceback" not in run.stderr
    assert rss_kb < 600_000, f"{rss_kb} KB: the image was decoded"


# ---------------------------------------------------------------- questions

QUESTION_CASES = {
    "valid": (VALID_QUESTION, True),
    "upper case": ("HOW MANY OBJECTS ARE THERE?", True),
    "only '?'": ("?", False),
    "only 'How'": ("How", False),
    "special tokens": ("[CLS] [SEP] [PAD]", False),
    "special tokens around a question": ("[CLS] How many objects are there? [SEP]", False),
    "empty": ("", False),
    "whitespace": ("   \t", False),
    "unknown word": ("How many zebras are there?", False),
    "33 tokens": (" ".join(["red"] * 31), False),
    "NUL": ("How many\x00 objects are there?", False),
    "bytes": (b"How many objects are there?", False),
    "None": (None, False),
    "int": (5, False),
}

QUESTION_OPERATIONS = {
    "Answerer.ask": lambda a, q: a.ask(_scene(), q)[0],
    "Answerer.ask_many": lambda a, q: a.ask_many([(_scene(), q)])[0][0],
    "QuestionEncoder.encode": lambda a, q: a.pipeline.questions.encode(q),
    "triton prepare": lambda a, q: prepare(_scene(), question_from_bytes(q) if isinstance(q, bytes) else q,
                                           a.pipeline.questions, a.pipeline.max_visual_len).input_ids,
}


@pytest.mark.parametrize("operation", list(QUESTION_OPERATIONS))
@pytest.mark.parametrize("case", list(QUESTION_CASES))
def test_questions(answerer, case, operation):
    question, valid = QUESTION_CASES[case]
    if operation == "triton prepare" and case == "bytes":
        valid = True  # the wire carries UTF-8 bytes: decoded, then it is the valid question
    result = held(QUESTION_OPERATIONS[operation], answerer, question)
    if valid:
        assert not isinstance(result, Exception), result
    else:  # a QuestionError, or ask_many's InputError for a pair whose question is not a string
        assert isinstance(result, QuestionError if isinstance(question, str) else InputError), result


@pytest.mark.parametrize("pairs", [["scene.png"], "scene.png", [("scene.png",)], [("scene.png", 3)], 5, [None]])
def test_ask_many_checks_its_pairs(answerer, pairs):
    assert isinstance(held(answerer.ask_many, pairs), InputError)


# ---------------------------------------------------------------- search and match texts

QUERY_CASES = {
    "valid": (VALID_QUERY, True),
    "upper case": ("A SMALL RED CIRCLE", True),
    "only 'a'": ("a", False),
    "only '?'": ("?", False),
    "special tokens": ("[CLS] [SEP] [PAD]", False),
    "special tokens around a query": ("[CLS] a small red circle [SEP]", False),
    "empty": ("", False),
    "whitespace": ("   \t", False),
    "unknown word": ("a small purple elephant", False),
    "33 tokens": (" ".join(["red"] * 31), False),
    "NUL": ("a small\x00 red circle", False),
    "bytes": (VALID_QUERY.encode(), False),
    "None": (None, False),
    "int": (5, False),
}


def _cli_search(r, q, monkeypatch):
    monkeypatch.setattr("fusionrt.cli.search.Searcher", lambda *a, **k: Kept(r.searcher))
    argv = ["search", str(r.index.path), q, "--top", "3", "--rerank", "4", "--json", "-"]
    return json.loads(_cli_result(argv)[0])["results"]


def _cli_match_text(r, q, monkeypatch):
    monkeypatch.setattr("fusionrt.cli.match.Matcher", lambda *a, **k: Kept(r.matcher))
    return float(_cli_result(["match", str(r.index.entries().popitem()[0]), q])[0])


QUERY_OPERATIONS = {
    "Matcher.match": lambda r, q: r.matcher.match(_scene(), q),
    "Searcher.search": lambda r, q: r.searcher.search(q, top=3),
    "Searcher.search --rerank": lambda r, q: r.searcher.search(q, top=3, rerank=4),
    "fusionrt search": _cli_search,
    "fusionrt match": _cli_match_text,
}


@pytest.mark.parametrize("operation", list(QUERY_OPERATIONS))
@pytest.mark.parametrize("case", list(QUERY_CASES))
def test_query_texts(readers, monkeypatch, case, operation):
    """Every reader of a search or match text (the CLI gets it as an argv string: bytes, None and int are API
    only)."""
    text, valid = QUERY_CASES[case]
    if operation.startswith("fusionrt") and not isinstance(text, str):
        pytest.skip("argv holds strings")
    extra = (monkeypatch,) if operation.startswith("fusionrt") else ()
    result = held(QUERY_OPERATIONS[operation], readers, text, *extra)
    if not valid:
        refusal = CliRefused if operation.startswith("fusionrt") else QuestionError if isinstance(text, str) \
            else InputError
        assert isinstance(result, refusal), result
    elif operation.endswith("match"):
        assert 0.0 <= result <= 1.0, result
    else:
        assert len(result) == 3 and all(np.isfinite(h["score"] if isinstance(h, dict) else h.score)
                                        for h in result), result


def test_an_index_open_elsewhere_is_a_typed_refusal(readers, capsys):
    """The embedded store admits one client: a second open (a search while `index add` runs) is refused."""
    from fusionrt.search.store import IndexBusyError

    assert isinstance(held(Searcher, readers.index.path), IndexBusyError)
    assert main(["search", str(readers.index.path), VALID_QUERY]) == 2
    err = capsys.readouterr().err
    assert "open elsewhere" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- bundle tampers


def _edit(change):
    def tamper(bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        change(manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return tamper


def _fusion_input(manifest, name):
    return next(t for t in manifest["graphs"]["fusion"]["inputs"] if t["name"] == name)


def _widen_t(manifest, also_model=False):
    for kind in ("inputs", "outputs"):
        for tensor in manifest["graphs"]["fusion"][kind]:
            if "T" in tensor.get("dynamic", {}):
                tensor["dynamic"]["T"]["max"] = 64
    if also_model:
        manifest["model"]["max_text_len"] = 64


def _deep(bundle: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text[:-2] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}\n")


def _flip(name):
    def tamper(bundle: Path) -> None:
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / name).write_bytes(bytes(data))
    return tamper


BUNDLE_CASES = {
    "value_range widened": _edit(lambda m: _fusion_input(m, "input_ids").update(value_range=[0, 10_000])),
    "T max widened": _edit(_widen_t),
    "T max and model.max_text_len widened": _edit(lambda m: _widen_t(m, also_model=True)),
    "model {}": _edit(lambda m: m.update(model={})),
    "model.vocab_size a string": _edit(lambda m: m["model"].update(vocab_size="127")),
    "model.num_answers wrong": _edit(lambda m: m["model"].update(num_answers=3)),
    "visual width wrong": _edit(lambda m: _fusion_input(m, "visual_feats").update(shape=["B", "M", 5])),
    "nested 100,000 deep": _deep,
    "manifest over 8 MB": lambda b: (b / "manifest.json").write_text(
        (b / "manifest.json").read_text()[:-2] + ', "pad": "' + "x" * (9 << 20) + '"}\n'),
    "manifest a list": lambda b: (b / "manifest.json").write_text("[]"),
    "manifest not JSON": lambda b: (b / "manifest.json").write_text("{"),
    "schema 99": _edit(lambda m: m.update(schema_version=99)),
    "graphs missing": _edit(lambda m: m.pop("graphs")),
    "file outside the bundle": _edit(lambda m: m["files"].update({"../x": {"sha256": "0", "bytes": 1}})),
    "fusion.onnx flipped": _flip("fusion.onnx"),
    "tokenizer.json deleted": lambda b: (b / "tokenizer.json").unlink(),
    "answers.json not a list": lambda b: (b / "answers.json").write_text("{}"),
    "safe_ranges malformed": _edit(lambda m: m.update(safe_ranges={"fusion": {"fp32": {"visual_feats": -1}}})),
}


# A manifest whose T range and model section agree on 64 is self-consistent: it opens and answers short
# questions, but the graph itself cannot take T=40, so that run must fail typed.
BUNDLE_OPENS = {"T max and model.max_text_len widened": ("Bundle.open", "Answerer")}


def _run_long_question(bundle: Path):
    with Session(bundle) as session:
        ids = np.full((1, 40), 5, np.int64)
        return session.run({"input_ids": ids, "text_mask": np.ones((1, 40), bool),
                            "visual_feats": np.zeros((1, 2, 69), np.float32), "visual_mask": np.ones((1, 2), bool)})


def _cli_ask(bundle: Path):
    status = main(["ask", "--bundle", str(bundle), str(ROOT / "tests" / "data" / "missing.png"), VALID_QUESTION])
    if status != 2:
        raise AssertionError(f"exit {status}")
    return status


BUNDLE_OPERATIONS = {
    "Bundle.open": lambda b: Bundle.open(b),
    "Session.run at T=40": _run_long_question,
    "Answerer": lambda b: Answerer(str(b)).ask(_scene(), VALID_QUESTION),
    "fusionrt ask --bundle": _cli_ask,
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile-bundle") / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, path)
    return path


@pytest.mark.parametrize("operation", list(BUNDLE_OPERATIONS))
@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_bundle_tampers(pristine, tmp_path, capsys, case, operation):
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    BUNDLE_CASES[case](bundle)
    result = held(BUNDLE_OPERATIONS[operation], bundle)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if operation == "fusionrt ask --bundle":
        assert result == 2 and len(err.strip().splitlines()) == 1, err
    elif operation in BUNDLE_OPENS.get(case, ()):
        assert not isinstance(result, Exception), result
    else:
        assert isinstance(result, FusionrtError), result


# The same tampers on the match and caption bundles, through their readers (API and CLI). The caption bundle
# has no fusion graph: the cases that edit it do not apply, and its step graph is the one flipped.
FUSION_EDITS = {"value_range widened", "T max widened", "T max and model.max_text_len widened",
                "visual width wrong", "fusion.onnx flipped"}
TASK_BUNDLE_CASES = {
    "match": {k: v for k, v in BUNDLE_CASES.items() if k != "answers.json not a list"},
    "caption": {**{k: v for k, v in BUNDLE_CASES.items() if k not in FUSION_EDITS | {"answers.json not a list"}},
                "caption_step.onnx flipped": _flip("caption_step.onnx"),
                # safe_ranges are read per graph a session opens: the caption bundle's own graph is spoilt
                "safe_ranges malformed": _edit(lambda m: m.update(
                    safe_ranges={"caption_step": {"fp32": {"visual_key": -1}}}))},
}
# Self-consistent manifests (see BUNDLE_OPENS): they open and serve short texts. num_answers is a VQA field:
# a match or caption bundle does not read it.
TASK_BUNDLE_OPENS = {"match": {"T max and model.max_text_len widened"},
                     "caption": {"model.num_answers wrong"}}


def _cli_refusal(argv: list[str]):
    status, _, err = _cli(argv)
    assert "Traceback" not in err, err
    if status == 2:
        assert len(err.strip().splitlines()) == 1, err
        raise CliRefused(err)
    return status


TASK_BUNDLE_OPERATIONS = {
    # name -> (task, operation(bundle path, readers))
    "Matcher": ("match", lambda b, r: Matcher(b, threads=1).match(_scene(), VALID_QUERY)),
    # the open index (its local store admits one client): the bundle is checked against the index's model
    "Searcher": ("match", lambda b, r: Searcher(r.index, b, threads=1).search(VALID_QUERY, rerank=4)),
    "fusionrt match --bundle": ("match", lambda b, r: _cli_refusal(
        ["match", str(ROOT / "tests" / "data" / "missing.png"), VALID_QUERY, "--bundle", str(b)])),
    "fusionrt index add --bundle": ("match", lambda b, r: _cli_refusal(
        ["index", "add", str(r.folders), "--index", str(r.folders / "tampered"), "--bundle", str(b), "-q"])),
    "Captioner": ("caption", lambda b, r: Captioner(str(b)).caption(_scene())),
    "fusionrt caption --bundle": ("caption", lambda b, r: _cli_refusal(
        ["caption", str(ROOT / "tests" / "data" / "missing.png"), "--bundle", str(b)])),
}
PRISTINE = {"match": SHIPPED_MATCH_BUNDLE, "caption": SHIPPED_BUNDLE.parent / "caption-bundle"}


@pytest.mark.parametrize("operation", list(TASK_BUNDLE_OPERATIONS))
@pytest.mark.parametrize("case", sorted(set(TASK_BUNDLE_CASES["match"]) | set(TASK_BUNDLE_CASES["caption"])))
def test_task_bundle_tampers(readers, tmp_path, case, operation):
    task, run = TASK_BUNDLE_OPERATIONS[operation]
    if case not in TASK_BUNDLE_CASES[task]:
        pytest.skip(f"not a {task} bundle's tamper")
    bundle = tmp_path / "bundle"
    shutil.copytree(PRISTINE[task], bundle)
    TASK_BUNDLE_CASES[task][case](bundle)
    result = held(run, bundle, readers)
    if case in TASK_BUNDLE_OPENS[task]:
        # opens; a CLI run on a missing image is then refused for the image
        assert not isinstance(result, Exception) or (isinstance(result, CliRefused) and "missing" in str(result)), \
            result
    else:
        assert isinstance(result, FusionrtError), result


# ---------------------------------------------------------------- CLI arguments


@pytest.fixture(scope="module")
def cli_places(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-cli")
    (folder / "afile").write_text("x")
    (folder / "pngs").mkdir()
    (folder / "pngs" / "a.png").write_bytes(encoded(Image.fromarray(_scene())))
    readonly = folder / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    return folder


B = str(SHIPPED_BUNDLE)
CLI_CASES = {
    "render --seed -1": ["render", "--seed", "-1", "{d}/x.png"],
    "parity --seed -1": ["parity", B, "--seed", "-1"],
    "parity --scenes -1": ["parity", B, "--scenes", "-1"],
    "parity --atol logit:1e-30 (misspelt output)": ["parity", B, "--reference", "onnxruntime", "--atol",
                                                    "logit:1e-30", "--scenes", "0"],
    "parity --min-cosine hiden:0.9": ["parity", B, "--min-cosine", "hiden:0.9", "--scenes", "0"],
    "parity --json afile/p.json": ["parity", B, "--reference", "onnxruntime", "--json", "{d}/afile/p.json"],
    "parity --json into a read-only dir": ["parity", B, "--json", "{d}/readonly/p.json"],
    "tune --batches 0": ["tune", B, "--batches", "0"],
    "tune --heldout-scenes -3": ["tune", B, "--heldout-scenes", "-3"],
    "tune --threads -1": ["tune", B, "--threads", "-1"],
    "pipeline --heldout-scenes -3": ["pipeline", "--out", "{d}/p", "--heldout-scenes", "-3"],
    "pipeline --parity-scenes -3": ["pipeline", "--out", "{d}/p", "--parity-scenes", "-3"],
    "pipeline --threads -1": ["pipeline", "--out", "{d}/p", "--threads", "-1"],
    "pipeline --junit afile/j.xml": ["pipeline", "--out", "{d}/p", "--junit", "{d}/afile/j.xml"],
    "train --steps -1": ["train", "--out", "{d}/t", "--steps", "-1"],
    "train --learning-rate nan": ["train", "--out", "{d}/t", "--learning-rate", "nan"],
    "bench --concurrency -3": ["bench", B, "--concurrency", "-3"],
    "bench --runs 0": ["bench", B, "--runs", "0"],
    "bench --json afile/b.json": ["bench", B, "--json", "{d}/afile/b.json"],
    "ask --top -1": ["ask", "{d}/pngs/a.png", VALID_QUESTION, "--top", "-1"],
    "ask --json a directory": ["ask", "{d}/pngs/a.png", VALID_QUESTION, "--json", "{d}/pngs"],
    "doctor --json afile/d.json": ["doctor", "--no-torch", "--json", "{d}/afile/d.json"],
    "render afile/x.png": ["render", "{d}/afile/x.png"],
    "render into a read-only dir": ["render", "{d}/readonly/x.png"],
    "doctor --json under /proc (cannot be written)": ["doctor", "--no-torch", "--json", "/proc/fusionrt-doctor.json"],
    "triton --out afile": ["triton", B, "--out", "{d}/afile"],
    "triton --max-batch 0": ["triton", B, "--out", "{d}/r", "--max-batch", "0"],
    "triton --queue-delay-us -2": ["triton", B, "--out", "{d}/r", "--queue-delay-us", "-2"],
    "serve --http-port 99999": ["serve", "{d}/pngs", "--http-port", "99999"],
    "serve --http-port -1": ["serve", "{d}/pngs", "--http-port", "-1"],
    "serve a folder of PNGs": ["serve", "{d}/pngs"],
    "calibrate --samples 0": ["calibrate", B, "--samples", "0"],
    "export --max-batch -1": ["export", "--out", "{d}/e", "--max-batch", "-1"],
    "search --top 0": ["search", "{d}/pngs", "a red circle", "--top", "0"],
    "search --rerank -1": ["search", "{d}/pngs", "a red circle", "--rerank", "-1"],
    "search --first-stage bogus": ["search", "{d}/pngs", "a red circle", "--first-stage", "bogus"],
    "search a folder that is no index": ["search", "{d}/pngs", "a red circle"],
    "search --bundle the VQA bundle": ["search", "{d}/pngs", "a red circle", "--bundle", B],
    "index add --batch 0": ["index", "add", "{d}/pngs", "--index", "{d}/i", "--batch", "0"],
    "index add --threads 0": ["index", "add", "{d}/pngs", "--index", "{d}/i", "--threads", "0"],
    "index add a missing DIR": ["index", "add", "{d}/none", "--index", "{d}/i"],
    "index add DIR a file": ["index", "add", "{d}/afile", "--index", "{d}/i"],
    "index add --index afile": ["index", "add", "{d}/pngs", "--index", "{d}/afile"],
    "index add --index under afile": ["index", "add", "{d}/pngs", "--index", "{d}/afile/i"],
    "index add --index into a read-only dir": ["index", "add", "{d}/pngs", "--index", "{d}/readonly/i"],
    "index add --vectors ftp://": ["index", "add", "{d}/pngs", "--index", "{d}/i", "--vectors", "ftp://x/y"],
    "index add --vectors a server that is not there": ["index", "add", "{d}/pngs", "--index", "{d}/i",
                                                       "--vectors", "http://127.0.0.1:9"],
    "index add --bundle the VQA bundle": ["index", "add", "{d}/pngs", "--index", "{d}/i", "--bundle", B],
    "index remove from a folder that is no index": ["index", "remove", "{d}/pngs/a.png", "--index", "{d}/pngs"],
    "index demo --scenes 0": ["index", "demo", "{d}/demo", "--scenes", "0"],
    "index demo under afile": ["index", "demo", "{d}/afile/demo", "--scenes", "1"],
    "match a missing image": ["match", "{d}/missing.png", "a red circle"],
    "match a directory": ["match", "{d}/pngs", "a red circle"],
    "match --bundle the VQA bundle": ["match", "{d}/pngs/a.png", "a red circle", "--bundle", B],
    "caption --beam 0": ["caption", "{d}/pngs/a.png", "--beam", "0"],
    "caption --max-new-tokens 0": ["caption", "{d}/pngs/a.png", "--max-new-tokens", "0"],
    "caption a directory": ["caption", "{d}/pngs"],
    "caption --bundle the VQA bundle": ["caption", "{d}/pngs/a.png", "--bundle", B],
    "unknown command": ["bogus"],
}


# What the one line must say where another error could also give status 2 (no tritonserver in this venv).
CLI_MESSAGES = {"serve --http-port 99999": "[1, 65535]", "serve --http-port -1": "[1, 65535]",
                "serve a folder of PNGs": "config.pbtxt"}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_arguments(cli_places, capsys, case):
    if "read-only" in case and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    argv = [a.replace("{d}", str(cli_places)) for a in CLI_CASES[case]]
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, (status, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert CLI_MESSAGES.get(case, "") in err
    assert not (cli_places / "afile").is_dir() and not (cli_places / "p").exists()
    assert not (cli_places / "i").exists() and not (cli_places / "demo").exists(), "a refused command wrote"


def test_parity_json_dash_writes_stdout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = main(["parity", B, "--reference", "onnxruntime", "--scenes", "0", "--json", "-", "-q"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["passed"] is True
    assert not (tmp_path / "-").exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """Ctrl-C while training: exit 130 and one line, not a KeyboardInterrupt traceback."""
    process = subprocess.Popen([sys.executable, "-m", "fusionrt", "train", "--out", str(tmp_path / "t"),
                                "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith("interrupted (Ctrl-C)") and "Traceback" not in err
