"""``fusionrt train --task match``: a short schedule lowers the loss and writes a loadable match checkpoint;
the shipped match checkpoint meets the issue's targets on (a part of) the held-out database."""

import json

import numpy as np

from fusionrt.cli import main
from fusionrt.data.matching import heldout_database
from fusionrt.model.match_checkpoint import SHIPPED_MATCH_CHECKPOINT, load_match_checkpoint
from fusionrt.train_config import MatchTrainConfig
from fusionrt.train_match import QueryTokens, SceneFeatures, evaluate_match, train_match


def test_short_match_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    config = MatchTrainConfig(train_scenes=200, heldout_scenes=120, heldout_queries=20, exhaustive_queries=4,
                              rerank=16, steps=60, scenes_per_step=16, warmup_steps=5, time_budget_s=0,
                              hidden=32, layers=1, heads=2, ffn=64, learning_rate=3e-3)
    metrics = train_match(config, tmp_path / "ckpt", progress=False)
    losses = metrics["loss_every_10_steps"]
    assert len(losses) == 6 and losses[-1] < 0.85 * losses[0]
    loaded = load_match_checkpoint(tmp_path / "ckpt")
    assert loaded.model.config.hidden == 32 and loaded.model.config.num_answers == 1
    saved = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert saved["itm_roc_auc"] == metrics["itm_roc_auc"] and 0 <= metrics["ndcg10_two_stage"] <= 1


def test_train_refuses_a_setting_of_the_other_task(tmp_path, capsys):
    assert main(["train", "--task", "match", "--out", str(tmp_path / "x"), "--left-of-per-scene", "2"]) == 2
    assert "--left-of-per-scene" in capsys.readouterr().err


def test_shipped_match_checkpoint_meets_the_targets_on_heldout_scenes():
    """AUC and nDCG@10 re-measured on the first scenes of the held-out database (a smaller one: exhaustive ITM
    over all 5,000 scenes is the benchmark's job); the full figures are in the checkpoint's metrics.json."""
    loaded = load_match_checkpoint(SHIPPED_MATCH_CHECKPOINT)
    database = heldout_database(600, 60)
    features = SceneFeatures(loaded.region_encoder, database.seeds)
    metrics = evaluate_match(loaded.model, QueryTokens(loaded.queries), database, features, rerank=64,
                             exhaustive_queries=60)
    assert metrics["itm_roc_auc"] >= 0.97
    assert metrics["ndcg10_two_stage"] >= 0.98 * metrics["ndcg10_exhaustive_itm"]
    assert np.isfinite(metrics["ndcg10_dual_encoder"])


def test_shipped_match_bundle_is_exported_from_the_shipped_checkpoint_and_agrees_with_it():
    from fusionrt.bundle.manifest import Bundle, sha256_file
    from fusionrt.runtime.session import Session
    from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE

    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    assert bundle.task == "match"
    assert sorted(bundle.graphs) == ["fusion", "image_embed", "region_encoder", "text_embed"]
    for name, digest in bundle.manifest["source"]["files"].items():
        stale = f"{name}: rerun scripts/make_small_bundle.py match"
        assert sha256_file(SHIPPED_MATCH_CHECKPOINT / name) == digest, stale
    loaded = load_match_checkpoint(SHIPPED_MATCH_CHECKPOINT)
    ids, mask = loaded.queries.encode_batch(["a small red circle", "two blue objects", "a square left of a circle"])
    feed = {"input_ids": ids, "text_mask": mask}
    reference = Session(bundle, "torch", "text_embed", checkpoint=SHIPPED_MATCH_CHECKPOINT).run(feed)
    deployed = Session(bundle, "onnxruntime", "text_embed").run(feed)
    assert np.abs(reference["text_embedding"] - deployed["text_embedding"]).max() < 1e-4
    assert np.allclose(np.linalg.norm(deployed["text_embedding"], axis=1), 1.0, atol=1e-5)
