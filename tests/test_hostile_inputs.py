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
from fusionrt.cli import main
from fusionrt.data.images import load_image
from fusionrt.data.world import generate_scene, render
from fusionrt.errors import FusionrtError, ImageError, InputError, QuestionError
from fusionrt.runtime import Bundle, Session
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
    "Answerer.ask": lambda a, path, data: a.ask(path, VALID_QUESTION)[0],
    "Answerer.ask_many": lambda a, path, data: a.ask_many([(path, VALID_QUESTION)])[0][0],
    "load_image": lambda a, path, data: load_image(path),
    "triton image_from_bytes": lambda a, path, data: image_from_bytes(data) if data is not None or path is None
    else pytest.skip("no bytes for this case"),
}


@pytest.mark.parametrize("operation", list(IMAGE_OPERATIONS))
@pytest.mark.parametrize("case", [*IMAGE_CASES, "missing file", "a directory"])
def test_images(answerer, image_inputs, case, operation):
    path, data = image_inputs[case]
    result = held(IMAGE_OPERATIONS[operation], answerer, path, data)
    valid = IMAGE_CASES.get(case, (None, False))[1]
    if valid:
        expected = str(len(generate_scene(SCENE_SEED).objects))
        assert not isinstance(result, Exception), result
        if isinstance(result, str):
            assert result == expected or valid == "any"
        else:
            assert result.shape == (128, 128, 3)
    else:
        assert isinstance(result, ImageError), result


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
