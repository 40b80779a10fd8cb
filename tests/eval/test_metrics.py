"""The papers' metrics on hand-made cases whose answers are worked out in the comments."""

import math

import numpy as np
import pytest

from edge.errors import SignguardError
from train.eval.metrics import (
    accuracy,
    attack_success_rate,
    defense_rate,
    detection_rate,
    fooling_ratio,
    l2_dissimilarity,
    mixed_set_mask,
    prn_gain,
    restoration_accuracy,
    rho_2,
    targeted_success_rate,
    targeted_summary,
)


def test_untargeted_success_counts_changed_predictions_not_wrong_ones():
    y = np.array([0, 1, 2, 3])
    pred_clean = np.array([0, 1, 2, 0])  # the last one is already wrong
    pred_adv = np.array([0, 2, 2, 1])  # two predictions change
    assert attack_success_rate(pred_clean, pred_adv) == 0.5
    assert fooling_ratio(pred_clean, pred_adv) == 0.5
    assert accuracy(pred_adv, y) == 0.5  # images 0 and 2 stay right


def test_targeted_success_and_blurnet_summary():
    assert targeted_success_rate(np.array([1, 1, 2]), np.array([1, 2, 2])) == pytest.approx(2 / 3)
    s = targeted_summary({1: 0.2, 4: 0.9, 7: 0.4})
    assert s == {"average": pytest.approx(0.5), "worst": 0.9, "worst_target": 4}
    with pytest.raises(SignguardError, match="per_target"):
        targeted_summary({})


def test_l2_dissimilarity_per_sample():
    x = np.ones((2, 3, 2, 2), np.float32)  # ||x||_2 = sqrt(12)
    x_adv = x.copy()
    x_adv[0, 0, 0, 0] += 3.0  # ||d|| = 3
    x_adv[1] -= 0.5  # ||d|| = 0.5 * sqrt(12)
    np.testing.assert_allclose(l2_dissimilarity(x, x_adv), [3 / math.sqrt(12), 0.5], rtol=1e-6)
    with pytest.raises(SignguardError, match="shape"):
        l2_dissimilarity(x, x_adv[:, :2])


def test_rho_2_is_the_mean_of_relative_perturbation_norms():
    x = np.zeros((2, 4))
    x[0, 0], x[1, :] = 2.0, 2.0  # norms 2 and 4
    assert rho_2(x, np.array([1.0, 1.0])) == pytest.approx((1 / 2 + 1 / 4) / 2)


def test_prn_gain_divides_by_the_rectified_accuracy():
    # PRN-gain = (acc(I^_rho) - acc(I_rho)) / acc(I^_rho) = (0.8 - 0.2) / 0.8
    assert prn_gain(0.8, 0.2) == pytest.approx(0.75)
    assert math.isnan(prn_gain(0.0, 0.0))


def test_restoration_accuracy_is_mixed_defended_over_clean():
    # acc(I^_{rho/c}) / acc(I_c): 0.45 on the half-perturbed set, 0.5 undefended on clean images
    assert restoration_accuracy(0.45, 0.5) == pytest.approx(0.9)
    assert math.isnan(restoration_accuracy(0.3, 0.0))


def test_detection_rate_is_detector_accuracy_on_clean_and_perturbed():
    flagged = np.array([1, 0, 1, 0])
    is_perturbed = np.array([1, 0, 0, 1])
    assert detection_rate(flagged, is_perturbed) == 0.5


def test_defense_rate_rectifies_only_the_flagged_images():
    y = np.array([0, 1, 2, 3])
    pred_raw = np.array([0, 9, 9, 3])  # images 1 and 2 are fooled as they are
    pred_rectified = np.array([5, 1, 2, 3])  # the PRN fixes 1 and 2 but breaks 0
    flagged = np.array([False, True, False, False])  # the detector only catches 1
    # I* predictions: [0, 1, 9, 3] -> acc 0.75; acc(I_c) = 0.8 -> 0.9375
    assert defense_rate(pred_raw, pred_rectified, flagged, y, acc_clean=0.8) == pytest.approx(0.9375)


def test_mixed_set_masks_follow_each_papers_protocol():
    fru = mixed_set_mask(101, "fru", seed=3)
    assert fru.dtype == bool and fru.sum() == 50
    prn = mixed_set_mask(10_000, "prn", seed=3)
    assert 0.47 < prn.mean() < 0.53
    assert np.array_equal(prn, mixed_set_mask(10_000, "prn", seed=3))
    assert not np.array_equal(prn, mixed_set_mask(10_000, "prn", seed=4))
    with pytest.raises(SignguardError, match="protocol"):
        mixed_set_mask(4, "akhtar")


def test_mismatched_lengths_raise_and_empty_sets_give_nan():
    with pytest.raises(SignguardError, match="same length"):
        attack_success_rate(np.array([0, 1]), np.array([0]))
    with pytest.raises(SignguardError, match="same length"):
        defense_rate(np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3), 1.0)
    assert math.isnan(fooling_ratio(np.array([], int), np.array([], int)))
