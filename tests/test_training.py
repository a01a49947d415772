import json
import re
from pathlib import Path

import pytest

from fusionrt.data.dataset import build_qa_set
from fusionrt.data.world import split_seeds
from fusionrt.model import SHIPPED_CHECKPOINT, load_checkpoint
from fusionrt.train import TrainConfig, evaluate, train

README = Path(__file__).resolve().parent.parent / "README.md"


def test_short_training_run_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    config = TrainConfig(
        train_scenes=300, heldout_scenes=40, steps=80, scenes_per_step=8, warmup_steps=5, learning_rate=3e-3,
        model_overrides={"hidden": 64, "layers": 2, "heads": 4, "ffn": 128},
    )
    metrics = train(config, tmp_path / "ckpt", progress=False)
    assert metrics["loss_last_50"] < 0.8 * metrics["loss_first_50"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.fusion.config.hidden == 64
    saved = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and set(saved["per_kind"]) <= {
        "color", "shape", "size", "count_color", "count_shape", "count_all", "exists", "left_of"}


def _readme_accuracy() -> dict[str, float]:
    """The held-out accuracy table of the README: ``| kind | 97.3% | ...``."""
    table = README.read_text().split("<!-- accuracy-table -->")[1]
    return {m[0]: float(m[1]) for m in re.findall(r"^\| *([a-z_]+) *\| *([0-9.]+)% *\|", table, re.M)}


@pytest.mark.slow
def test_shipped_checkpoint_reaches_the_readme_accuracy(question_encoder):
    checkpoint = load_checkpoint(SHIPPED_CHECKPOINT)
    stated = _readme_accuracy()
    heldout_scenes = json.loads((SHIPPED_CHECKPOINT / "metrics.json").read_text())["train_config"]["heldout_scenes"]
    heldout = build_qa_set(split_seeds("heldout", heldout_scenes), checkpoint.questions)
    measured = evaluate(checkpoint.fusion, checkpoint.region_encoder, heldout)
    assert abs(100 * measured["accuracy"] - stated["overall"]) <= 1.0
    for kind, result in measured["per_kind"].items():
        assert abs(100 * result["accuracy"] - stated[kind]) <= 1.0, kind
    assert stated["overall"] >= 90.0
