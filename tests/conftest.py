import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when tests run.
torch.set_num_threads(int(os.environ.get("FUSIONRT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def question_encoder():
    from fusionrt.data.tokenizer import QuestionEncoder, train_tokenizer

    return QuestionEncoder(train_tokenizer(), max_text_len=32)
