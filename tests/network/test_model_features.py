"""The pooled features the head sees: which stages join the top's grid, and the widths of their blocks."""

from __future__ import annotations

import keras
import numpy as np

from core.base.backbones import create_backbone
from core.network.model import (_stage, build_classifier, feature_blocks, feature_extractor,
                                with_mid_level_features)


def test_stages_4_to_7_join_the_top_grid_and_each_pooled_block_is_that_stages_own_average():
    """Stages 4 and 5 (twice the top's grid) are averaged 2x2 onto it, 6 and 7 join as they are: the head's GAP of
    the merged map equals each stage's own global average, in order. A dropped stage, a wrong pooling (max, or
    a 3x3 window) or a shuffled order would not give these numbers."""
    keras.utils.set_random_seed(0)
    base = create_backbone("efficientnet_lite0", 64, weights=None)
    merged = with_mid_level_features(base)
    assert merged.output_shape == (None, 2, 2, 80 + 112 + 192 + 320 + 1280)
    classifier = build_classifier(merged, 3)
    assert feature_blocks(classifier) == (80, 112, 192, 320, 1280)
    stage_outputs = [[layer for layer in base.layers if _stage(layer.name) == n][-1].output for n in (4, 5, 6, 7)]
    stages = keras.Model(base.input, [*stage_outputs, base.output])
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    expected = np.concatenate([np.asarray(m).mean(axis=(1, 2)) for m in stages(images.astype("float32"))], axis=1)
    got = keras.ops.convert_to_numpy(feature_extractor(classifier)(images))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_stage_on_any_other_grid_ends_the_search_and_top_only_is_one_block():
    # Lite1 at 240 px: the top's grid is 8, stage 5's 15 (not twice 8), so only stages 6 and 7 join.
    lite1 = with_mid_level_features(create_backbone("efficientnet_lite1", 240, weights=None))
    assert feature_blocks(build_classifier(lite1, 2)) == (192, 320, 1280)
    plain = build_classifier(create_backbone("efficientnet_lite0", 64, weights=None), 2)
    assert feature_blocks(plain) == (1280,)
