import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when tests run.
torch.set_num_threads(int(os.environ.get("FUSIONRT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def question_encoder():
    from fusionrt.data.tokenizer import QuestionEncoder, train_tokenizer

    return QuestionEncoder(train_tokenizer(), max_text_len=32)


@pytest.fixture(scope="session")
def tiny_model():
    """A small random fusion model (H=32, 2 layers) shared by the runtime and bench tests."""
    from fusionrt.model import FusionConfig, FusionModel

    torch.manual_seed(0)
    config = FusionConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
                          max_text_len=16, max_visual_len=8)
    return FusionModel(config).eval()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    """``tiny_model`` exported (max batch 16). Tests that alter a bundle alter a copy of it."""
    from fusionrt.export import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("tiny") / "bundle", vocab_size=50, visual_dim=12,
                       max_text_len=16, max_visual_len=8, max_batch=16)


@pytest.fixture(scope="session")
def caption_tokens():
    from fusionrt.train_caption import caption_tokens as make

    return make()
