import numpy as np

from fusionrt.data.detector import CROP_SIZE, detect_regions
from fusionrt.data.world import BACKGROUND, COLORS, generate_scene, render


def test_detector_finds_every_object_with_tight_boxes():
    found = total = 0
    for seed in range(200):
        scene = generate_scene(seed)
        regions = detect_regions(render(scene))
        truth = sorted(o.box for o in scene.objects)
        boxes = sorted(tuple(int(v) for v in b) for b in regions.boxes)
        assert len(boxes) == len(truth), f"seed {seed}: {len(boxes)} regions for {len(truth)} objects"
        for t, b in zip(truth, boxes, strict=True):
            # A rendered shape never paints outside its box, and touches each side within 1 px.
            assert t[0] <= b[0] <= t[0] + 1 and t[1] <= b[1] <= t[1] + 1
            assert t[2] - 1 <= b[2] <= t[2] and t[3] - 1 <= b[3] <= t[3]
            found += 1
        total += len(truth)
    assert found == total


def test_regions_are_sorted_left_to_right_with_geometry_and_masked_crops():
    scene = generate_scene(11)
    regions = detect_regions(render(scene))
    assert np.all(np.diff(regions.boxes[:, 0]) >= 0)
    assert regions.crops.shape == (len(scene.objects), 3, CROP_SIZE, CROP_SIZE)
    centre_x = (regions.boxes[:, 0] + regions.boxes[:, 2]) / 2 / 128
    assert np.allclose(regions.geometry[:, 0], centre_x)
    colors = {tuple(c) for c in regions.crops[:, :, CROP_SIZE // 2, CROP_SIZE // 2]}
    assert colors <= set(COLORS.values())
    # Outside the object the crop is pure background: neighbours never leak in.
    corner = regions.crops[:, :, 0, 0]
    assert np.all(np.abs(corner.astype(int) - np.array(BACKGROUND)) <= 8)


def test_empty_image_gives_no_region():
    image = np.full((128, 128, 3), 235, dtype=np.uint8)
    regions = detect_regions(image)
    assert len(regions) == 0
    assert regions.crops.shape == (0, 3, CROP_SIZE, CROP_SIZE) and regions.geometry.shape == (0, 5)


def test_max_regions_keeps_the_largest():
    scene = generate_scene(3)
    regions = detect_regions(render(scene), max_regions=2)
    all_regions = detect_regions(render(scene))
    assert len(regions) == 2
    assert sorted(regions.areas) == sorted(all_regions.areas)[-2:]


def test_oversized_object_is_shrunk_into_the_crop():
    image = np.full((128, 128, 3), 235, dtype=np.uint8)
    image[10:90, 20:60] = COLORS["red"]
    regions = detect_regions(image)
    assert len(regions) == 1
    red = np.all(regions.crops[0].transpose(1, 2, 0) == COLORS["red"], axis=2)
    assert 0 < red.sum() < CROP_SIZE * CROP_SIZE
