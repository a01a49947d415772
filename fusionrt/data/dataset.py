"""Question-answer sets built through the real pre-processing: render, detect, tokenize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionrt.data.detector import detect_regions
from fusionrt.data.questions import QUESTION_KINDS, Question, questions_for
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import ANSWERS, COLORS, IMAGE_SIZE, SHAPES, SIZES, Scene, generate_scene, render
from fusionrt.progress import SILENT, Progress

HEAD_WORDS = (*SHAPES, "object")


def _referent_targets(question: Question, input_ids: np.ndarray, head_ids: set[int]) -> tuple[list[int], list[float]]:
    """Token positions of the phrases' head words (the k-th shape word or "object") and the x of their objects."""
    heads = [i for i, token in enumerate(input_ids) if token in head_ids]
    tokens, xs = [-1, -1], [0.0, 0.0]
    for k, obj in enumerate(question.referents[:2]):
        tokens[k] = heads[k]
        xs[k] = (obj.x / IMAGE_SIZE - 0.5) / 0.25
    return tokens, xs


def _region_attributes(scene: Scene, boxes: np.ndarray) -> np.ndarray:
    """Attributes of the object whose box centre is nearest each region's centre (-1 if none is close)."""
    out = np.full((len(boxes), 3), -1, dtype=np.int64)
    if not scene.objects or not len(boxes):
        return out
    centres = np.array([(o.x, o.y) for o in scene.objects], dtype=np.float64)
    region_centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    distance = np.linalg.norm(region_centres[:, None, :] - centres[None, :, :], axis=2)
    for region, nearest in enumerate(distance.argmin(axis=1)):
        if distance[region, nearest] <= 3:
            obj = scene.objects[nearest]
            out[region] = (list(COLORS).index(obj.color), SHAPES.index(obj.shape), list(SIZES).index(obj.size))
    return out


@dataclass
class QASet:
    """Regions of many scenes (concatenated, indexed by ``region_offsets``) and questions on them."""

    crops: np.ndarray  # uint8 [R,3,32,32]
    geometry: np.ndarray  # float32 [R,5]
    region_offsets: np.ndarray  # int64 [S+1]
    scene_index: np.ndarray  # int64 [Q]
    input_ids: np.ndarray  # int64 [Q,T]
    text_mask: np.ndarray  # bool [Q,T]
    answer_index: np.ndarray  # int64 [Q]
    kind_index: np.ndarray  # int64 [Q]
    # Training-only supervision: colour, shape and size index of the object under each region
    # (-1 where a region matches no object). Inference never sees it.
    region_attributes: np.ndarray  # int64 [R,3]
    # Training-only grounding: token index of the head word of the first / second phrase that
    # names an object (-1 if none) and that object's standardised centre x.
    referent_token: np.ndarray  # int64 [Q,2]
    referent_x: np.ndarray  # float32 [Q,2]

    def __len__(self) -> int:
        return int(self.scene_index.shape[0])

    def first_scenes(self, scenes: int) -> QASet:
        """The questions and regions of the first ``scenes`` scenes (questions are stored scene by scene)."""
        scenes = max(0, min(scenes, len(self.region_offsets) - 1))
        questions = int(np.searchsorted(self.scene_index, scenes))
        regions = int(self.region_offsets[scenes])
        return QASet(
            crops=self.crops[:regions], geometry=self.geometry[:regions],
            region_offsets=self.region_offsets[: scenes + 1], scene_index=self.scene_index[:questions],
            input_ids=self.input_ids[:questions], text_mask=self.text_mask[:questions],
            answer_index=self.answer_index[:questions], kind_index=self.kind_index[:questions],
            region_attributes=self.region_attributes[:regions], referent_token=self.referent_token[:questions],
            referent_x=self.referent_x[:questions])

    def regions_of(self, question: int) -> slice:
        scene = self.scene_index[question]
        return slice(int(self.region_offsets[scene]), int(self.region_offsets[scene + 1]))


def build_qa_set(
    seeds: range, questions: QuestionEncoder, per_kind: int | dict[str, int] = 1, max_regions: int | None = None,
    progress: Progress = SILENT, description: str = "scenes",
) -> QASet:
    """Render and detect every scene of ``seeds`` and ask up to ``per_kind`` questions of each kind."""
    crops, geometry, attributes, offsets = [], [], [], [0]
    scene_index, asked, answers, kinds = [], [], [], []
    answer_ids = {a: i for i, a in enumerate(ANSWERS)}
    kind_ids = {k: i for i, k in enumerate(QUESTION_KINDS)}
    for scene_number, seed in enumerate(progress.iterate(seeds, description, unit="scene")):
        scene = generate_scene(seed)
        regions = detect_regions(render(scene), max_regions=max_regions)
        crops.append(regions.crops)
        geometry.append(regions.geometry)
        attributes.append(_region_attributes(scene, regions.boxes))
        offsets.append(offsets[-1] + len(regions))
        rng = np.random.default_rng(seed + 104729)
        for q in questions_for(scene, rng, per_kind=per_kind):
            scene_index.append(scene_number)
            asked.append(q)
            answers.append(answer_ids[q.answer])
            kinds.append(kind_ids[q.kind])
    input_ids, text_mask = questions.encode_batch([q.text for q in asked])
    head_ids = {questions.tokenizer.token_to_id(word) for word in HEAD_WORDS}
    referents = [_referent_targets(q, ids, head_ids) for q, ids in zip(asked, input_ids, strict=True)]
    return QASet(
        crops=np.concatenate(crops), geometry=np.concatenate(geometry),
        region_offsets=np.asarray(offsets, dtype=np.int64), scene_index=np.asarray(scene_index, dtype=np.int64),
        input_ids=input_ids, text_mask=text_mask, answer_index=np.asarray(answers, dtype=np.int64),
        kind_index=np.asarray(kinds, dtype=np.int64), region_attributes=np.concatenate(attributes),
        referent_token=np.asarray([r[0] for r in referents], dtype=np.int64).reshape(-1, 2),
        referent_x=np.asarray([r[1] for r in referents], dtype=np.float32).reshape(-1, 2),
    )
