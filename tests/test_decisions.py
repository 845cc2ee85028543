"""Per-category serving decisions (textguide.decisions): a category onboarded after training starts on text
similarity, graduates to the adapter (or a blend) only on a significant gain measured on its own interactions,
and the decisions survive save / load and show in ``info``.

The scenario: a recommend-only adapter trained on the 20-product catalog, then two categories onboarded, and the
adapter fine-tuned on Garden's interactions (a hidden rule: whoever buys a buys succ[a], a random pairing), so
that it *helps* Garden (text similarity cannot know the pairing) and *hurts* Pond, whose users buy the nearest
text neighbour of what they bought (text similarity is right by construction)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PRODUCTS
from textguide import cli
from textguide import decisions as dec
from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.guide import Guide
from textguide.tasks.recommend import recommend_queries
from textguide.training import TrainConfig
from textguide.transfer import TransferConfig

ENC = HashingEncoder(dim=32)
GARDEN = [f"g{100 + i}" for i in range(40)]
POND = [f"w{100 + i}" for i in range(40)]


def _garden() -> list[dict]:
    nouns = ["hose", "rake", "spade", "planter", "trowel", "sprinkler", "lantern", "bench"]
    adjs = ["steel", "wooden", "copper", "green", "folding", "solar"]
    return [{"id": GARDEN[i], "title": f"{adjs[i % 6]} garden {nouns[i % 8]} {i}", "description": "for the garden",
             "category": "Garden"} for i in range(40)]


def _pond() -> list[dict]:
    words = ["pump", "liner", "filter", "lily", "koi", "fountain", "net", "skimmer", "heater", "stone"]
    kinds = ["mini", "large", "floating", "solar", "ceramic"]
    return [{"id": POND[i], "title": f"{kinds[i % 5]} pond {words[i % 10]} model {i // 10}",
             "description": f"{words[(i + 3) % 10]} {kinds[(i + 1) % 5]}", "category": "Pond"} for i in range(40)]


def _succ() -> dict[str, str]:
    perm = np.random.default_rng(3).permutation(40)
    return {GARDEN[i]: GARDEN[perm[i]] for i in range(40) if perm[i] != i}


def _garden_sequences(n: int, seed: int) -> list[list[str]]:
    succ = _succ()
    firsts = sorted(succ)
    return [[a, succ[a]] for a in np.random.default_rng(seed).choice(firsts, n)]


def _pond_sequences(guide: Guide, n: int, seed: int) -> list[list[str]]:
    """Each user buys a pond item, then its nearest text neighbour among the pond items."""
    out = []
    for a in np.random.default_rng(seed).choice(POND, n):
        out.append([str(a), guide.similar(str(a), k=1, category="Pond").ids[0]])
    return out


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved guide: trained on the 20 products, Garden and Pond onboarded, adapter fine-tuned on Garden."""
    path = tmp_path_factory.mktemp("decisions") / "guide"
    guide = Guide.build(Catalog.from_records([dict(p) for p in PRODUCTS]), ENC)
    torch.manual_seed(0)
    guide.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=ENC.dim, dim=16, seq_layers=1, seq_heads=2,
                                                     max_history=8, dropout=0.0, tasks=("recommend",))))
    guide.save(path)
    guide.onboard(Catalog.from_records(_garden() + _pond()))
    train = TrainConfig(steps=300, batch_size=64, lr=1e-2, eval_every=25, patience=100, show_progress=False)
    report = guide.fine_tune(_garden_sequences(300, 0), config=TransferConfig(candidates=("model:finetune",), train=train))
    assert report["chosen"] == "model:finetune"
    return path


@pytest.fixture
def guide(scenario: Path, tmp_path: Path) -> Guide:
    shutil.copytree(scenario, tmp_path / "guide")
    return Guide.load(tmp_path / "guide", encoder=ENC)


# ------------------------------------------------------------------------------------------ where decisions come from
def test_onboarded_categories_start_on_text_trained_ones_keep_the_adapter(guide: Guide) -> None:
    table = guide.decisions()["recommend"]
    assert table["Garden"]["method"] == "text" and table["Garden"]["source"] == "onboarded"
    assert table["Garden"]["evidence"]["items"] == 40
    assert table["Kitchen"] == {**table["Kitchen"], "method": "adapter", "source": "trained"}
    assert set(table) == {"Kitchen", "Tops", "Shoes", "Bags", "Decor", "Garden", "Pond"}
    assert guide.recommend(["g101"], k=5, category="Garden").method == "text"
    assert guide.recommend(["p01", "p02"], k=5).method == "adapter"  # history in a trained category
    # an unfiltered query whose history spans a trained and an onboarded category: the conservative choice
    assert guide.recommend(["p01", "g101"], k=5).method == "text"
    # a filter naming a trained category serves it with the adapter whatever the history
    assert guide.recommend(["g101"], k=5, category="Kitchen").method == "adapter"
    # explicit methods still win
    assert guide.recommend(["g101"], k=5, category="Garden", method="adapter").method == "adapter"


def test_text_decision_answers_exactly_like_method_text(guide: Guide) -> None:
    auto = guide.recommend(["g101", "g105"], k=8, category="Garden")
    text = guide.recommend(["g101", "g105"], k=8, category="Garden", method="text")
    assert auto.ids == text.ids and np.allclose(auto.scores, text.scores)


def test_re_onboarding_a_trained_category_records_nothing(guide: Guide) -> None:
    before = guide.adapter_meta.get("decisions")
    guide.onboard(Catalog.from_records([{"id": "k99", "title": "Carbon steel wok", "category": "Kitchen"}]))
    assert guide.adapter_meta.get("decisions") == before
    assert guide.decisions()["recommend"]["Kitchen"]["source"] == "trained"


# ------------------------------------------------------------------------------------------ observe
def test_observe_graduates_the_helped_category_and_keeps_text_for_the_hurt_one(guide: Guide) -> None:
    helped = guide.observe(_garden_sequences(200, 1), "Garden", k=1)
    assert helped["decision"]["weight"] > 0 and helped["decision"]["evidence"]["switched"]
    ev = helped["decision"]["evidence"]
    assert ev["ci95"][0] > 0 and ev["users"] == {"select": 100, "held_out": 100}
    assert ev["held_out"]["adapter"] > ev["held_out"]["text"] + 0.5
    assert guide.recommend(["g101"], k=5, category="Garden").method == helped["decision"]["method"].replace(
        "blend", f"blend:{helped['decision']['weight']:g}")

    hurt = guide.observe(_pond_sequences(guide, 200, 2), "Pond", k=1)
    ev = hurt["decision"]["evidence"]
    assert hurt["decision"]["method"] == "text" and not ev["switched"]
    assert ev["held_out"]["text"] > ev["held_out"]["adapter"]  # the adapter does hurt Pond
    assert guide.recommend(["w101"], k=5, category="Pond").method == "text"


def test_observe_switches_back_to_text_when_the_adapter_hurts(guide: Guide) -> None:
    guide.set_decision("Pond", "adapter")  # say someone forced the adapter on
    report = guide.observe(_pond_sequences(guide, 200, 2), "Pond", k=1)
    ev = report["decision"]["evidence"]
    assert ev["current"] == "adapter" and ev["switched"] and report["decision"]["method"] != "adapter"
    assert ev["ci95"][0] > 0


def test_observe_does_not_switch_without_enough_evidence(guide: Guide) -> None:
    report = guide.observe(_garden_sequences(8, 1), "Garden", k=1, min_users=20)
    ev = report["decision"]["evidence"]
    assert report["decision"]["method"] == "text" and not ev["switched"] and "min_users=20" in ev["verdict"]
    assert guide.decisions()["recommend"]["Garden"]["source"] == "observed"


def test_observe_errors(guide: Guide) -> None:
    with pytest.raises(ValueError, match="no live item has category='Moon'"):
        guide.observe(_garden_sequences(10, 1), "Moon")
    with pytest.raises(KeyError, match="unknown item ids in sequence 0"):
        guide.observe([["nope", "g101"]], "Garden")
    with pytest.raises(ValueError, match="need at least 2 sequences"):
        guide.observe([["g101"]], "Garden")
    with pytest.raises(ValueError, match="observe supports task 'recommend', 'outfit' or 'coupon'"):
        guide.observe([["g101", "g102"]], "Garden", task="sort")
    with pytest.raises(ValueError, match="no trained 'coupon' adapter"):
        guide.observe([["g101", "g102"]], "Garden", task="coupon")


# ------------------------------------------------------------------------------------------ persistence, info, override
def test_decisions_survive_save_and_load_and_show_in_info(guide: Guide, capsys: pytest.CaptureFixture[str]) -> None:
    guide.observe(_garden_sequences(200, 1), "Garden", k=1)
    observed = guide.decisions()["recommend"]["Garden"]
    back = Guide.load(guide.path, encoder=ENC)
    assert back.decisions()["recommend"]["Garden"] == observed
    assert back.info()["serving"]["recommend"]["Garden"]["source"] == "observed"
    assert back.recommend(["g101"], k=5, category="Garden").method != "text"
    assert json.loads((guide.path / "reports" / "observe.json").read_text())["category"] == "Garden"
    assert cli.main(["info", str(guide.path)]) == 0
    shown = json.loads(capsys.readouterr().out)["serving"]["recommend"]
    assert shown["Garden"]["method"] == observed["method"] and shown["Pond"]["method"] == "text"


def test_set_decision_blend_scores_are_the_weighted_cosines(guide: Guide) -> None:
    guide.set_decision("Garden", "blend", weight=0.25, note="half trust")
    assert Guide.load(guide.path, encoder=ENC).decisions()["recommend"]["Garden"]["source"] == "user"
    hits = guide.recommend(["g101", "g107"], k=6, category="Garden")
    assert hits.method == "blend:0.25"
    # by hand: 0.25 * adapter cosine + 0.75 * text cosine over the Garden items, history excluded
    idx = guide.index
    rows = [idx.row_of[i] for i in GARDEN if i not in ("g101", "g107")]
    qt = idx.embeddings[[idx.row_of["g101"], idx.row_of["g107"]]].mean(0)
    qt /= np.linalg.norm(qt)
    qa = recommend_queries(guide.adapter, idx.embeddings, [[idx.row_of["g101"], idx.row_of["g107"]]])[0]
    qa /= np.linalg.norm(qa)
    s = 0.25 * (encode_items(guide.adapter, idx.embeddings[rows], "recommend") @ qa) + 0.75 * (idx.embeddings[rows] @ qt)
    order = np.argsort(-s, kind="stable")[:6]
    assert hits.ids == [idx.ids[rows[j]] for j in order]
    assert np.allclose(hits.scores, s[order], atol=1e-5)
    guide.set_decision("Garden", "auto")  # forget it: back to the onboarded default
    assert guide.decisions()["recommend"]["Garden"]["source"] == "onboarded"
    with pytest.raises(ValueError, match="method='blend' needs a weight strictly between 0 and 1"):
        guide.set_decision("Garden", "blend", weight=1.5)
    with pytest.raises(ValueError, match="no trained 'coupon' adapter"):
        guide.set_decision("Garden", "text", task="coupon")


# ------------------------------------------------------------------------------------------ the switching rule alone
def test_decide_switches_only_when_the_interval_is_above_zero() -> None:
    rng = np.random.default_rng(0)
    n = 400
    text = rng.random(n) < 0.3
    select = dec.split_users(n, 0.5, 0)
    # a large, consistent gain: switch
    big = {0.0: text.astype(float), 1.0: np.maximum(text, rng.random(n) < 0.5).astype(float)}
    d = dec.decide(big, 0.0, select)
    assert d.weight == 1.0 and d.source == "observed" and d.evidence["ci95"][0] > 0
    # a tiny gain (one selection user and one held-out user better): picked, but the interval includes 0
    small = text.astype(float).copy()
    small[[np.flatnonzero(~select & ~text)[0], np.flatnonzero(select & ~text)[0]]] = 1.0
    d = dec.decide({0.0: text.astype(float), 1.0: small}, 0.0, select)
    assert d.evidence["candidate"] == "adapter" and d.evidence["gain"] == pytest.approx(1 / (~select).sum())
    assert d.weight == 0.0 and not d.evidence["switched"] and d.evidence["ci95"][0] <= 0 <= d.evidence["ci95"][1]
    # equal everywhere: keep the current weight, whatever it is
    same = {0.0: text.astype(float), 0.5: text.astype(float), 1.0: text.astype(float)}
    assert dec.decide(same, 0.5, select).weight == 0.5
    with pytest.raises(ValueError, match="must include the current weight 0.25"):
        dec.decide(same, 0.25, select)


def test_paired_bootstrap_interval_matches_the_normal_approximation() -> None:
    diff = np.random.default_rng(1).normal(0.1, 1.0, 2000)
    lo, hi = dec.paired_bootstrap(diff, n_boot=4000, seed=0)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert lo == pytest.approx(diff.mean() - 1.96 * se, abs=0.01) and hi == pytest.approx(diff.mean() + 1.96 * se, abs=0.01)


def test_decision_record_round_trip_and_validation() -> None:
    d = dec.Decision(0.5, "observed", {"gain": 0.1})
    assert dec.Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d and d.method == "blend"
    with pytest.raises(ValueError, match="decision weight must be a number in \\[0, 1\\]"):
        dec.Decision(2.0, "user")
    with pytest.raises(ValueError, match="decision source must be one of"):
        dec.Decision(0.0, "guess")
    meta = {"methods": {"recommend": "text"}, "trained_categories": ["A"]}
    assert dec.resolve(meta, "recommend", "A", True).weight == 0.0  # validated choice: text
    assert dec.combine({"trained_categories": ["A"]}, "recommend", ["A", "B"], True) == 0.0
    assert dec.combine({}, "recommend", ["A", "B"], True) == 1.0  # older guides: nothing recorded, validated choice


# ------------------------------------------------------------------------------------------ coupon families
# The same scenario for coupons: one single-product coupon per Garden and Pond item, families onboarded after
# the coupon adapter was built, then its head trained on Garden redemptions (whoever bought a redeems the coupon
# of succ[a]): it helps Garden and knows nothing of Pond, whose users redeem the offered coupon nearest in text
# to what they bought (text similarity is right by construction).
def _coupon_of(item: str) -> str:
    return f"c-{item}"


def _garden_records(n: int, seed: int) -> list[dict]:
    succ, rng = _succ(), np.random.default_rng(seed)
    out = []
    for a in rng.choice(sorted(succ), n):
        others = [g for g in GARDEN if g not in (a, succ[a])]
        offered = [succ[a], *rng.choice(others, 5, replace=False)]
        out.append({"history": [str(a)], "offered": [_coupon_of(str(g)) for g in rng.permutation(offered)],
                    "redeemed": [_coupon_of(succ[a])]})
    return out


def _pond_records(guide: Guide, n: int, seed: int) -> list[dict]:
    rng, emb, row = np.random.default_rng(seed), guide.index.embeddings, guide.index.row_of
    out = []
    for a in rng.choice(POND, n):
        offered = [str(w) for w in rng.choice([w for w in POND if w != a], 6, replace=False)]
        nearest = max(offered, key=lambda w: float(emb[row[w]] @ emb[row[str(a)]]))
        out.append({"history": [str(a)], "offered": [_coupon_of(w) for w in offered], "redeemed": [_coupon_of(nearest)]})
    return out


@pytest.fixture(scope="module")
def coupon_scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved guide with a coupon adapter: built on the 20 products, Garden and Pond (and their coupons) added,
    then the coupon head trained on Garden redemptions."""
    from textguide.tasks.coupon import CouponTask
    from textguide.training import train

    path = tmp_path_factory.mktemp("coupon-decisions") / "guide"
    guide = Guide.build(Catalog.from_records([dict(p) for p in PRODUCTS]), ENC)
    torch.manual_seed(0)
    guide.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=ENC.dim, dim=16, seq_heads=2, dropout=0.0,
                                                     tasks=("coupon",))))
    guide.onboard(Catalog.from_records(_garden() + _pond()))
    guide.add_coupons({_coupon_of(i): [i] for i in GARDEN + POND}, save=False)
    succ, row = _succ(), guide.index.row_of
    users = sorted(succ)
    pairs = [(u, c) for u in range(len(users)) for c in range(len(GARDEN))]
    data = CouponTask(guide.index.embeddings, [[row[a]] for a in users], [[row[g]] for g in GARDEN],
                      np.array([int(GARDEN[c] == succ[users[u]]) for u, c in pairs]), None,
                      np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    train(guide.adapter, {"coupon": data}, TrainConfig(steps=400, batch_size=128, lr=3e-3, show_progress=False))
    guide.save(path)
    return path


@pytest.fixture
def coupon_guide(coupon_scenario: Path, tmp_path: Path) -> Guide:
    shutil.copytree(coupon_scenario, tmp_path / "guide")
    return Guide.load(tmp_path / "guide", encoder=ENC)


def test_onboarded_coupon_families_start_on_text(coupon_guide: Guide) -> None:
    table = coupon_guide.decisions()["coupon"]
    assert table["Garden"]["source"] == table["Pond"]["source"] == "onboarded"
    assert table["Garden"]["method"] == table["Pond"]["method"] == "text"
    assert table["Kitchen"]["method"] == "adapter" and table["Kitchen"]["source"] == "trained"
    offered = [_coupon_of(g) for g in GARDEN[:6]]
    auto = coupon_guide.rank_coupons(["g101"], offered)
    text = coupon_guide.rank_coupons(["g101"], offered, method="text")
    assert auto.method == "text" and auto.ids == text.ids and np.allclose(auto.scores, text.scores)


def test_observe_graduates_the_helped_coupon_family_and_keeps_text_for_the_hurt_one(coupon_guide: Guide) -> None:
    helped = coupon_guide.observe(_garden_records(200, 1), "Garden", task="coupon", k=1)
    ev = helped["decision"]["evidence"]
    assert helped["decision"]["weight"] > 0 and ev["switched"] and ev["metric"] == "AUC" and ev["ci95"][0] > 0
    assert ev["users"] == {"select": 100, "held_out": 100}
    assert ev["held_out"]["adapter"] > ev["held_out"]["text"] + 0.2
    hits = coupon_guide.rank_coupons(["g101"], [_coupon_of(g) for g in GARDEN[:6]])
    assert hits.method == dec.hits_label(helped["decision"]["weight"])

    hurt = coupon_guide.observe(_pond_records(coupon_guide, 200, 2), "Pond", task="coupon", k=1)
    ev = hurt["decision"]["evidence"]
    assert hurt["decision"]["method"] == "text" and not ev["switched"]
    assert ev["held_out"]["text"] == 1.0 > ev["held_out"]["adapter"]  # the adapter does hurt Pond
    assert coupon_guide.rank_coupons(["w101"], [_coupon_of(w) for w in POND[:6]]).method == "text"
    # a coupon list spanning both families is served with the conservative (smaller) weight: text
    mixed = [_coupon_of(g) for g in GARDEN[:3]] + [_coupon_of(w) for w in POND[:3]]
    assert coupon_guide.rank_coupons(["g101"], mixed).method == "text"
    back = Guide.load(coupon_guide.path, encoder=ENC)
    assert back.decisions()["coupon"]["Garden"] == coupon_guide.decisions()["coupon"]["Garden"]
    assert json.loads((coupon_guide.path / "reports" / "observe.json").read_text())["task"] == "coupon"


def test_observe_coupon_errors(coupon_guide: Guide) -> None:
    with pytest.raises(ValueError, match="no registered coupon is of family 'Moon'"):
        coupon_guide.observe(_garden_records(10, 1), "Moon", task="coupon")
    with pytest.raises(KeyError, match=r"unknown coupon ids in record 0: \['nope'\]"):
        coupon_guide.observe([{"history": ["g101"], "offered": ["nope"], "redeemed": []}], "Garden", task="coupon")
    with pytest.raises(ValueError, match="record 0 must be a dict with 'history', 'offered' and 'redeemed'"):
        coupon_guide.observe([["g101", "g102"]], "Garden", task="coupon")
    with pytest.raises(ValueError, match="need at least 2 records with a redeemed and an unredeemed coupon"):
        coupon_guide.observe([{"history": ["g101"], "offered": ["c-g102"], "redeemed": ["c-g102"]}], "Garden",
                             task="coupon")
