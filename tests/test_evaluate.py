"""Tests for textguide.evaluate: hand-computed values, brute-force cross-checks and every ValueError path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from textguide import evaluate as ev

LOG2_3 = math.log2(3)  # 1.5849625...
LOG2_5 = math.log2(5)  # 2.3219281...

# One user: hits at 0-based positions 1 ("b") and 3 ("d"); "x" is relevant but never retrieved.
RANKED = ["a", "b", "c", "d", "e"]
RELEVANT = {"b", "d", "x"}


# ---------------------------------------------------------------------------------------------------------
# ranked-list metrics
# ---------------------------------------------------------------------------------------------------------


def test_recall_at_k_hand() -> None:
    assert ev.recall_at_k(RANKED, RELEVANT, 1) == 0.0  # top-1 = {a}
    assert ev.recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)  # {b} of 3 relevant
    assert ev.recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)  # {b, d} of 3
    assert ev.recall_at_k(RANKED, RELEVANT, 100) == pytest.approx(2 / 3)  # k beyond the list


def test_hit_at_k_hand() -> None:
    assert ev.hit_at_k(RANKED, RELEVANT, 1) == 0.0
    assert ev.hit_at_k(RANKED, RELEVANT, 2) == 1.0


def test_ndcg_at_k_hand() -> None:
    # k=5: DCG = 1/log2(1+2) + 1/log2(3+2); IDCG over min(3, 5) = 3 hits = 1/log2(2) + 1/log2(3) + 1/log2(4)
    dcg = 1 / LOG2_3 + 1 / LOG2_5  # 0.63093 + 0.43068 = 1.06161
    idcg = 1 + 1 / LOG2_3 + 0.5  # 2.13093
    assert ev.ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg / idcg)  # 0.49819
    # k=2: DCG = 1/log2(3); IDCG over min(3, 2) = 2 hits = 1 + 1/log2(3)
    assert ev.ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))  # 0.38685
    # leave-one-out: single target at rank 2 -> 1/log2(2+2) = 0.5; outside k -> 0
    assert ev.ndcg_at_k(["a", "b", "c"], {"c"}, 3) == pytest.approx(0.5)
    assert ev.ndcg_at_k(["a", "b", "c"], {"c"}, 2) == 0.0
    assert ev.ndcg_at_k(["c", "a"], {"c"}, 1) == 1.0


def test_average_precision_at_k_hand() -> None:
    # k=5: P@2 = 1/2 at "b", P@4 = 2/4 at "d" -> (0.5 + 0.5) / min(3, 5) = 1/3
    assert ev.average_precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(1 / 3)
    # k=2: P@2 = 1/2 -> 0.5 / min(3, 2) = 0.25
    assert ev.average_precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.25)
    # perfect list: (1/1 + 2/2) / 2 = 1
    assert ev.average_precision_at_k(["b", "d", "a"], {"b", "d"}, 3) == pytest.approx(1.0)


def test_duplicates_count_once_like_kaggle_apk() -> None:
    # ["b", "b", "a"] with relevant {a, b}: hits at positions 0 and 2 only -> (1/1 + 2/3) / 2 = 5/6
    assert ev.average_precision_at_k(["b", "b", "a"], {"a", "b"}, 3) == pytest.approx(5 / 6)
    assert ev.recall_at_k(["b", "b", "b"], {"a", "b"}, 3) == pytest.approx(0.5)


def test_mrr_hand_and_int_ids() -> None:
    assert ev.mrr(RANKED, RELEVANT) == pytest.approx(0.5)  # first hit at position 1
    assert ev.mrr(RANKED, RELEVANT, k=1) == 0.0  # cut off before the first hit
    assert ev.mrr(["a"], {"z"}) == 0.0
    assert ev.mrr(np.array([5, 3, 9]), {9}) == pytest.approx(1 / 3)  # numpy ints hash like python ints
    assert ev.recall_at_k([], {"a"}, 5) == 0.0  # empty ranked list scores 0


def test_ranking_report_hand() -> None:
    # user 0: RANKED / RELEVANT -> Recall@2 1/3, NDCG@2 0.38685, Hit@2 1, MAP@2 0.25, MRR 0.5
    # user 1: ["x", "y"] / {"y"} -> Recall@2 1, NDCG@2 1/log2(3), Hit@2 1, MAP@2 0.5, MRR 0.5
    report = ev.ranking_report([RANKED, ["x", "y"]], [RELEVANT, {"y"}], ks=(2,))
    assert set(report) == {"Recall@2", "NDCG@2", "Hit@2", "MAP@2", "MRR"}
    assert report["Recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert report["NDCG@2"] == pytest.approx(((1 / LOG2_3) / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 2)
    assert report["Hit@2"] == pytest.approx(1.0)
    assert report["MAP@2"] == pytest.approx((0.25 + 0.5) / 2)
    assert report["MRR"] == pytest.approx(0.5)
    assert set(ev.ranking_report([RANKED], [RELEVANT])) >= {"Recall@10", "NDCG@50", "MAP@10"}
    assert "MAP@12" in ev.ranking_report([RANKED], [RELEVANT], ks=12)


# ---------------------------------------------------------------------------------------------------------
# full ranking
# ---------------------------------------------------------------------------------------------------------

SCORES = np.array(
    [
        [0.1, 0.9, 0.5, 0.7],  # target 2 (0.5); item 1 excluded; only item 3 (0.7) beats it -> rank 1
        [0.3, 0.3, 0.3, 0.3],  # target 1; all tied, ties count against the target -> rank 3
        [1.0, 2.0, 3.0, 4.0],  # target 0 (listed in exclude, ignored); item 3 excluded; items 1, 2 beat it -> 2
    ]
)
TARGETS = np.array([2, 1, 0])
EXCLUDE = [[1], [], [3, 0]]


def test_rank_of_target_hand() -> None:
    np.testing.assert_array_equal(ev.rank_of_target(SCORES, TARGETS, EXCLUDE), [1, 3, 2])
    np.testing.assert_array_equal(ev.rank_of_target(SCORES, TARGETS), [2, 3, 3])  # no exclusion
    np.testing.assert_array_equal(ev.rank_of_target(SCORES, TARGETS, EXCLUDE, batch_size=1), [1, 3, 2])
    sets = [set(e) for e in EXCLUDE]  # histories as sets or arrays work too
    np.testing.assert_array_equal(ev.rank_of_target(SCORES, TARGETS, sets), [1, 3, 2])
    np.testing.assert_array_equal(ev.rank_of_target(SCORES, TARGETS, [np.array(e, int) for e in EXCLUDE]), [1, 3, 2])
    # integer scores, and a -inf target among excluded -inf items: excluded items never compete
    np.testing.assert_array_equal(ev.rank_of_target(np.array([[3, 1, 2]]), np.array([1])), [2])
    s = np.array([[-np.inf, -np.inf, 0.0]])
    np.testing.assert_array_equal(ev.rank_of_target(s, np.array([0]), [[1]]), [1])


def test_full_ranking_metrics_hand() -> None:
    # ranks [1, 3, 2]
    m = ev.full_ranking_metrics(SCORES, TARGETS, EXCLUDE, ks=(1, 2))
    assert m["Recall@1"] == 0.0
    assert m["Recall@2"] == pytest.approx(1 / 3)  # only rank 1 < 2
    assert m["Hit@2"] == m["Recall@2"]
    assert m["NDCG@2"] == pytest.approx((1 / LOG2_3) / 3)  # 1/log2(1+2) for the one hit
    assert m["MAP@2"] == pytest.approx(0.5 / 3)  # 1/(1+1)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 3) / 3)  # 13/36


def _slow_ranked_list(scores: np.ndarray, target: int, excluded: list[int]) -> list[int]:
    """Every non-excluded item by descending score, tied items placed before the target."""
    keep = [j for j in range(scores.shape[0]) if j == target or j not in set(excluded)]
    return sorted(keep, key=lambda j: (-scores[j], j == target))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_metrics_matches_slow_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 37, 60
    scores = np.round(rng.random((n_users, n_items)), 1)  # one decimal -> many ties
    targets = rng.integers(0, n_items, n_users)
    exclude = [list(rng.choice(n_items, rng.integers(0, 15), replace=False)) for _ in range(n_users)]
    exclude[0].append(int(targets[0]))  # the target in the history is never excluded
    ranks = ev.rank_of_target(scores, targets, exclude, batch_size=8)
    lists = [_slow_ranked_list(scores[u], int(targets[u]), exclude[u]) for u in range(n_users)]
    slow_ranks = [lst.index(int(t)) for lst, t in zip(lists, targets)]
    np.testing.assert_array_equal(ranks, slow_ranks)
    fast = ev.full_ranking_metrics(scores, targets, exclude, ks=(5, 10), batch_size=8)
    slow = ev.ranking_report(lists, [{int(t)} for t in targets], ks=(5, 10))
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key]), key


def test_metrics_from_ranks_concatenated_chunks() -> None:
    rng = np.random.default_rng(3)
    scores, targets = rng.random((20, 30)), rng.integers(0, 30, 20)
    ranks = np.concatenate([ev.rank_of_target(scores[:7], targets[:7]), ev.rank_of_target(scores[7:], targets[7:])])
    assert ev.metrics_from_ranks(ranks, ks=(10,)) == ev.full_ranking_metrics(scores, targets, ks=(10,))


# ---------------------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------------------


def test_roc_auc_hand() -> None:
    # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # ties: pos 0.5 vs neg 0.5 -> 1/2, vs 0.2 -> 1; pos 0.9 beats both -> 2; (0.5 + 1 + 2) / 4 = 0.875
    assert ev.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert ev.roc_auc([True, False], [0.0, 0.0]) == pytest.approx(0.5)  # all tied


def _brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    s = rng.integers(0, 10, 150) + 0.3 * y  # integer-ish scores -> many ties, some signal
    assert ev.roc_auc(y, s) == pytest.approx(_brute_auc(y, s))


def test_grouped_auc_hand() -> None:
    groups = ["u1", "u1", "u1", "u2", "u2", "u3"]
    labels = [1, 0, 0, 1, 0, 1]
    scores = [0.9, 0.1, 0.95, 0.2, 0.8, 0.5]
    # u1: 0.9 > 0.1, 0.9 < 0.95 -> 0.5; u2: 0.2 < 0.8 -> 0.0; u3 has one class -> skipped
    auc, counted = ev.grouped_auc(labels, scores, groups)
    assert (auc, counted) == (pytest.approx(0.25), 2)
    # size-weighted: (0.5 * 3 + 0.0 * 2) / 5 = 0.3
    assert ev.grouped_auc(labels, scores, groups, weight="size")[0] == pytest.approx(0.3)


def test_grouped_auc_matches_per_group_loop() -> None:
    rng = np.random.default_rng(7)
    n = 400
    groups = rng.integers(0, 25, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n), 1)
    expected = [
        _brute_auc(y[groups == g], s[groups == g])
        for g in np.unique(groups)
        if 0 < y[groups == g].sum() < (groups == g).sum()
    ]
    auc, counted = ev.grouped_auc(y, s, groups)
    assert counted == len(expected)
    assert auc == pytest.approx(np.mean(expected))


def test_precision_recall_f1_hand() -> None:
    labels, probs = [1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5]
    # >= 0.5 predicts [1, 0, 1, 0, 1]: tp = 2 (0, 4), fp = 1 (2), fn = 1 (1) -> P = R = F1 = 2/3
    p, r, f = ev.precision_recall_f1(labels, probs, 0.5)
    assert (p, r, f) == (pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert ev.precision_recall_f1(labels, probs, 0.95) == (0.0, 0.0, 0.0)  # nothing predicted: 0/0 -> 0


def test_best_f1_threshold_hand() -> None:
    labels, probs = [1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5]
    # sorted desc: 0.9(1) 0.6(0) 0.5(1) 0.4(1) 0.1(0); F1 = 2tp / (n_pred + 3):
    # 2/4, 2/5, 4/6, 6/7, 6/8 -> best at threshold 0.4 with 6/7
    t, f = ev.best_f1_threshold(labels, probs)
    assert t == 0.4 and f == pytest.approx(6 / 7)
    # tied probs move together: t=0.5 -> tp 1, n_pred 2 -> 2/3; t=0.2 -> 2/(3+1) = 0.5
    t, f = ev.best_f1_threshold([1, 0, 0], [0.5, 0.5, 0.2])
    assert t == 0.5 and f == pytest.approx(2 / 3)


def test_best_f1_threshold_matches_scan() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)
    scan = {float(t): ev.precision_recall_f1(y, p, float(t))[2] for t in np.unique(p)}
    t, f = ev.best_f1_threshold(y, p)
    assert f == pytest.approx(max(scan.values()))
    assert scan[t] == pytest.approx(f)


def test_log_loss_and_accuracy_hand() -> None:
    # -(ln 0.8 + ln(1 - 0.3)) / 2 = (0.223144 + 0.356675) / 2 = 0.289909
    assert ev.log_loss([1, 0], [0.8, 0.3]) == pytest.approx(0.2899092)
    # label 0 with prob 1.0 is clipped to 1 - 1e-15 (in float64: 1 - 9.992e-16) -> -ln(9.992e-16) = 34.5396
    assert ev.log_loss([0], [1.0]) == pytest.approx(-math.log(1.0 - (1.0 - 1e-15)))
    assert ev.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert ev.accuracy(["a", "b"], ["a", "c"]) == 0.5


# ---------------------------------------------------------------------------------------------------------
# outfits
# ---------------------------------------------------------------------------------------------------------

FITB = np.array([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.2, 0.3]])
ANSWERS = np.array([0, 0, 1])


def test_fitb_accuracy_and_recall_among_hand() -> None:
    # q0: 0.9 strictly max -> right; q1: 0.5 tied with 0.5 -> wrong; q2: 0.2 < 0.3 -> wrong -> 1/3
    assert ev.fitb_accuracy(FITB, ANSWERS) == pytest.approx(1 / 3)
    # ranks (ties against the answer): q0 0, q1 1, q2 1 -> all within top-2
    assert ev.recall_at_k_among(FITB, ANSWERS, 2) == 1.0
    assert ev.recall_at_k_among(FITB, ANSWERS, 1) == ev.fitb_accuracy(FITB, ANSWERS)


def test_near_duplicate_rate_and_mean_cosine_hand() -> None:
    q = np.array([[2.0, 0.0]])
    r = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]]])  # cosines 1, 0.70711, 0, -1
    assert ev.near_duplicate_rate(q, r, 0.9) == pytest.approx(1 / 4)
    assert ev.near_duplicate_rate(q, r, 0.5) == pytest.approx(2 / 4)
    assert ev.near_duplicate_rate(q, r, 1.0) == 0.0  # strictly greater: cosine 1.0 does not exceed 1.0
    assert ev.mean_cosine(q, r) == pytest.approx((1 + 2**-0.5 + 0 - 1) / 4)  # 0.17678
    # (n, dim) results: one result per query; cosines 1 and 0
    q2, r2 = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    assert ev.near_duplicate_rate(q2, r2) == 0.5
    assert ev.mean_cosine(q2, r2) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# multi-task and transfer gain
# ---------------------------------------------------------------------------------------------------------

SINGLE = {"rec": {"recall": 0.2, "ndcg": 0.1}, "coupon": {"auc": 0.7, "logloss": 0.5}, "outfit": {"fitb": 0.5}}
MULTI = {"rec": {"recall": 0.22, "ndcg": 0.1}, "coupon": {"auc": 0.63, "logloss": 0.4}, "outfit": {"fitb": 0.6}}


def test_multitask_gain_hand() -> None:
    # rec: recall (0.22-0.2)/0.2 = +0.1, ndcg 0 -> task mean 0.05
    # coupon: auc (0.63-0.7)/0.7 = -0.1, logloss (0.4-0.5)/0.5 = -0.2, lower is better -> +0.2 -> mean 0.05
    # outfit: fitb (0.6-0.5)/0.5 = +0.2
    # per task (LibMTL): (0.05 + 0.05 + 0.2) / 3 = 0.1; flat over metrics: (0.1+0-0.1+0.2+0.2)/5 = 0.08
    assert ev.multitask_gain(MULTI, SINGLE, {"logloss"}) == pytest.approx(0.1)
    assert ev.multitask_gain(MULTI, SINGLE, {"logloss"}, average="metric") == pytest.approx(0.08)
    # without the flip, logloss counts -0.2: coupon mean -0.15 -> (0.05 - 0.15 + 0.2) / 3 = 0.0333
    assert ev.multitask_gain(MULTI, SINGLE) == pytest.approx(0.1 / 3)
    assert ev.multitask_gain(SINGLE, SINGLE, {"logloss"}) == 0.0


def test_relative_gain_hand() -> None:
    # auc (0.66-0.6)/0.6 = +0.1; logloss (0.45-0.5)/0.5 = -0.1, lower is better -> +0.1
    g = ev.relative_gain({"auc": 0.66, "logloss": 0.45}, {"auc": 0.6, "logloss": 0.5}, {"logloss"})
    assert g == {"auc": pytest.approx(0.1), "logloss": pytest.approx(0.1)}
    assert ev.relative_gain({"auc": 0.54}, {"auc": 0.6}) == {"auc": pytest.approx(-0.1)}


# ---------------------------------------------------------------------------------------------------------
# every ValueError path
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ev.recall_at_k(RANKED, RELEVANT, k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fn", [ev.recall_at_k, ev.ndcg_at_k, ev.hit_at_k, ev.average_precision_at_k, lambda r, s, k: ev.mrr(r, s)]
)
def test_ranked_list_errors(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="relevant is empty"):
        fn(RANKED, set(), 3)
    with pytest.raises(ValueError, match="not a single string"):
        fn(RANKED, "b", 3)
    with pytest.raises(ValueError, match="ranked_ids must be a sequence"):
        fn("abc", {"b"}, 3)


def test_ranking_report_errors() -> None:
    with pytest.raises(ValueError, match="2 ranked lists but 1 relevant sets"):
        ev.ranking_report([RANKED, RANKED], [RELEVANT])
    with pytest.raises(ValueError, match="ranked_lists is empty"):
        ev.ranking_report([], [])
    with pytest.raises(ValueError, match="user 1: relevant is empty"):
        ev.ranking_report([RANKED, RANKED], [RELEVANT, set()])
    with pytest.raises(ValueError, match="ks is empty"):
        ev.ranking_report([RANKED], [RELEVANT], ks=())
    with pytest.raises(ValueError, match="each k in ks must be a positive integer"):
        ev.ranking_report([RANKED], [RELEVANT], ks=(10, 0))


def test_rank_of_target_errors() -> None:
    with pytest.raises(ValueError, match="scores must be 2-D"):
        ev.rank_of_target(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="scores is empty"):
        ev.rank_of_target(np.zeros((0, 3)), np.array([], dtype=int))
    with pytest.raises(ValueError, match="scores must be numeric"):
        ev.rank_of_target(np.array([["a", "b"]]), np.array([0]))
    with pytest.raises(ValueError, match="targets has 2 entries but scores has 3 rows"):
        ev.rank_of_target(SCORES, np.array([0, 1]))
    with pytest.raises(ValueError, match="targets must be 1-D"):
        ev.rank_of_target(SCORES, np.zeros((3, 1), dtype=int))
    with pytest.raises(ValueError, match="targets must hold integer"):
        ev.rank_of_target(SCORES, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"targets\[1\] = 4 is out of range for 4 columns"):
        ev.rank_of_target(SCORES, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="exclude has 2 lists but scores has 3 rows"):
        ev.rank_of_target(SCORES, TARGETS, [[1], []])
    with pytest.raises(ValueError, match=r"exclude\[2\] contains item 9, out of range"):
        ev.rank_of_target(SCORES, TARGETS, [[1], [], [9]])
    with pytest.raises(ValueError, match=r"exclude\[0\] must hold integer"):
        ev.rank_of_target(SCORES, TARGETS, [[1.5], [], []])
    with pytest.raises(ValueError, match=r"exclude\[0\] must be a flat list"):
        ev.rank_of_target(SCORES, TARGETS, [[[1]], [], []])
    bad = SCORES.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="scores contains NaN in row 2"):
        ev.rank_of_target(bad, TARGETS, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ev.rank_of_target(SCORES, TARGETS, batch_size=0)
    with pytest.raises(ValueError, match="ks is empty"):
        ev.full_ranking_metrics(SCORES, TARGETS, ks=[])


def test_metrics_from_ranks_errors() -> None:
    with pytest.raises(ValueError, match="ranks is empty"):
        ev.metrics_from_ranks(np.array([], dtype=int))
    with pytest.raises(ValueError, match="ranks must be integers"):
        ev.metrics_from_ranks(np.array([0.5]))
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        ev.metrics_from_ranks(np.array([0, -1]))


def test_classification_errors() -> None:
    with pytest.raises(ValueError, match="only one class|undefined with one class"):
        ev.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be binary.*found 2 at index 1"):
        ev.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be binary"):
        ev.roc_auc(["a", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be binary"):
        ev.roc_auc([0.0, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels has 2 entries but scores has 3"):
        ev.roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels is empty"):
        ev.roc_auc([], [])
    with pytest.raises(ValueError, match="labels must be 1-D"):
        ev.roc_auc([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="scores contains NaN at index 1"):
        ev.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="scores must be numeric"):
        ev.roc_auc([0, 1], ["x", "y"])
    with pytest.raises(ValueError, match="none of the 2 groups has both"):
        ev.grouped_auc([0, 1], [0.1, 0.2], ["a", "b"])
    with pytest.raises(ValueError, match="labels has 2 entries but groups has 1"):
        ev.grouped_auc([0, 1], [0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="weight must be 'uniform' or 'size'"):
        ev.grouped_auc([0, 1], [0.1, 0.2], ["a", "a"], weight="count")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels has 1 entries but probs has 2"):
        ev.precision_recall_f1([1], [0.1, 0.2])
    with pytest.raises(ValueError, match="threshold must be finite"):
        ev.precision_recall_f1([1], [0.1], float("nan"))
    with pytest.raises(ValueError, match="no positive"):
        ev.best_f1_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]; probs\[1\] = 1.5"):
        ev.log_loss([0, 1], [0.1, 1.5])
    with pytest.raises(ValueError, match="eps must be in"):
        ev.log_loss([0, 1], [0.1, 0.5], eps=0.0)
    with pytest.raises(ValueError, match="labels has 2 entries but preds has 1"):
        ev.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="preds is empty"):
        ev.accuracy([0], [])


def test_outfit_errors() -> None:
    with pytest.raises(ValueError, match="answer_index has 2 entries but scores has 3 rows"):
        ev.fitb_accuracy(FITB, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"answer_index\[0\] = 3 is out of range for 3 columns"):
        ev.fitb_accuracy(FITB, np.array([3, 0, 0]))
    with pytest.raises(ValueError, match="at least 2 candidates"):
        ev.fitb_accuracy(np.ones((2, 1)), np.array([0, 0]))
    with pytest.raises(ValueError, match="candidate_scores must be 2-D"):
        ev.fitb_accuracy(np.ones(3), np.array([0]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ev.recall_at_k_among(FITB, ANSWERS, 0)
    q = np.array([[1.0, 0.0]])
    with pytest.raises(ValueError, match="2 queries but result_vecs has 1 rows"):
        ev.near_duplicate_rate(np.ones((2, 2)), np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="vector dim mismatch: query_vecs has dim 2, result_vecs has 3"):
        ev.mean_cosine(q, np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="query_vecs must be 2-D"):
        ev.mean_cosine(np.ones(2), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"result_vecs must be \(n, k, dim\)"):
        ev.mean_cosine(q, np.ones((1, 1, 1, 2)))
    with pytest.raises(ValueError, match="empty input"):
        ev.mean_cosine(q, np.ones((1, 0, 2)))
    with pytest.raises(ValueError, match="zero vector"):
        ev.mean_cosine(q, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="must be finite"):
        ev.mean_cosine(q, np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"threshold is a cosine and must be in \[-1, 1\]"):
        ev.near_duplicate_rate(q, q, threshold=90)


def test_gain_errors() -> None:
    with pytest.raises(ValueError, match="single is empty"):
        ev.multitask_gain({}, {})
    with pytest.raises(ValueError, match=r"tasks differ: only in multi: \[\], only in single: \['outfit'\]"):
        ev.multitask_gain({"rec": MULTI["rec"], "coupon": MULTI["coupon"]}, SINGLE)
    with pytest.raises(ValueError, match=r"metrics of task 'rec' differ: only in multi: \['mrr'\]"):
        ev.multitask_gain({**MULTI, "rec": {**MULTI["rec"], "mrr": 0.3}}, SINGLE)
    with pytest.raises(ValueError, match="task 'rec' has no metrics"):
        ev.multitask_gain({"rec": {}}, {"rec": {}})
    with pytest.raises(ValueError, match=r"lower_is_better names unknown metrics \['log_loss'\]"):
        ev.multitask_gain(MULTI, SINGLE, {"log_loss"})
    with pytest.raises(ValueError, match="lower_is_better must be a set of metric names"):
        ev.multitask_gain(MULTI, SINGLE, "logloss")
    with pytest.raises(ValueError, match="task 'outfit' metric 'fitb': baseline is 0"):
        ev.multitask_gain(MULTI, {**SINGLE, "outfit": {"fitb": 0.0}})
    with pytest.raises(ValueError, match="values must be finite"):
        ev.multitask_gain({**MULTI, "outfit": {"fitb": float("nan")}}, SINGLE)
    with pytest.raises(ValueError, match="average must be 'task'"):
        ev.multitask_gain(MULTI, SINGLE, average="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base is empty"):
        ev.relative_gain({}, {})
    with pytest.raises(ValueError, match=r"metrics differ: only in new: \['ndcg'\]"):
        ev.relative_gain({"auc": 0.6, "ndcg": 0.1}, {"auc": 0.5})
    with pytest.raises(ValueError, match="metric 'auc': baseline is 0"):
        ev.relative_gain({"auc": 0.6}, {"auc": 0.0})
