import numpy as np

from fusionrt.data.dataset import build_qa_set
from fusionrt.data.questions import QUESTION_KINDS
from fusionrt.data.world import ANSWERS, COLORS, SHAPES, generate_scene, split_seeds


def test_qa_set_indexes_regions_questions_and_training_targets(question_encoder):
    seeds = split_seeds("train", 40)
    qa = build_qa_set(seeds, question_encoder, per_kind={"left_of": 2})
    assert qa.region_offsets[-1] == len(qa.crops) == len(qa.geometry) == len(qa.region_attributes)
    assert np.all(np.diff(qa.scene_index) >= 0)
    # Every region of the world is matched to the object under it.
    assert (qa.region_attributes >= 0).all()
    for q in range(len(qa)):
        seed = seeds[qa.scene_index[q]]
        regions = qa.regions_of(q)
        objects = generate_scene(seed).objects
        assert regions.stop - regions.start == len(objects)
        colors = sorted(list(COLORS)[c] for c in qa.region_attributes[regions, 0])
        assert colors == sorted(o.color for o in objects)
        tokens = qa.referent_token[q]
        kind = QUESTION_KINDS[qa.kind_index[q]]
        if kind == "left_of":
            heads = [question_encoder.tokenizer.id_to_token(int(qa.input_ids[q, t])) for t in tokens]
            assert all(h in SHAPES for h in heads) and tokens[0] < tokens[1]
            # The grounding targets are the x of the two objects the answer compares.
            assert ANSWERS[qa.answer_index[q]] == ("yes" if qa.referent_x[q, 0] < qa.referent_x[q, 1] else "no")
        elif kind.startswith("count") or kind == "exists":
            assert (tokens == -1).all()
    left_of = qa.kind_index == QUESTION_KINDS.index("left_of")
    assert left_of.sum() > 40  # two per scene where the scene allows it
