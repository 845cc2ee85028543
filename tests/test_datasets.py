"""Dataset loaders: data-root resolution and errors (no data needed), then real-data counts from the READMEs.

The `real` tests read ../shared/data in place (or $TEXTGUIDE_DATA) and skip when it is absent.
Counts are those stated in each folder's README.md; where a README counts something differently the comment says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import textguide.bench.datasets as D
from textguide.bench.datasets._common import join_sentences, trim_text

ITEM_COLUMNS = ["id", "title", "text", "category"]


# --------------------------------------------------------------------------- no data needed


def test_data_root_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path))
    assert D.data_root() == tmp_path


def test_data_root_env_missing_dir_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="TEXTGUIDE_DATA"):
        D.data_root()


def test_missing_file_names_path_and_readme(tmp_path: Path) -> None:
    (tmp_path / "amazon-toys-catalog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Toys_and_Games.*README\.md"):
        D.load_toys(root=tmp_path)


def test_missing_dataset_folder_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hm"):
        D.load_hm_articles()


def test_compose_and_trim() -> None:
    assert join_sentences(["Strap top", "Vest top.", None, float("nan"), "", "vest top", "Black"]) == (
        "Strap top. Vest top. Black."
    )
    long = " ".join(["word"] * 200)
    assert len(trim_text(long)) <= 400 and not trim_text(long).endswith(" ")


def test_hm_baskets_unique_items_in_order() -> None:
    tx = pd.DataFrame(
        {
            "t_dat": pd.to_datetime(["2020-09-16"] * 4 + ["2020-09-17"]),
            "customer_id": ["a", "a", "a", "b", "a"],
            "item_id": ["hm:2", "hm:1", "hm:2", "hm:3", "hm:4"],
        }
    )
    assert D.hm_baskets(tx) == [["hm:2", "hm:1"]]
    assert D.hm_baskets(tx, min_items=1) == [["hm:2", "hm:1"], ["hm:3"], ["hm:4"]]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return D.data_root()
    except FileNotFoundError as exc:
        pytest.skip(f"no shared data: {exc}")


def _check_items(items: pd.DataFrame, pattern: str, n: int) -> None:
    assert list(items.columns[:4]) == ITEM_COLUMNS
    assert len(items) == n
    assert items["id"].is_unique
    assert items["id"].str.fullmatch(pattern).all(), items["id"][~items["id"].str.fullmatch(pattern)].head()
    assert (items["text"].str.len() > 0).all()
    assert (items["text"].str.len() <= 400).all()


@pytest.mark.real
def test_scientific(root: Path) -> None:
    ds = D.load_scientific(root)
    _check_items(ds.items, r"sci:[0-9A-Z]{10}", 4385)
    assert ds.items["id"].iloc[0] == "sci:B00TNNWMXI"  # item2index order (index 0)
    assert len(ds.train) == 34101 and len(ds.valid) == 8442 and ds.test is None
    assert len({row.user for row in ds.valid}) == 8442
    ids = set(ds.items["id"])
    user, history, target = ds.train[0]
    assert user == "ABW8NXS7SV55K" and target in ids and set(history) <= ids and 1 <= len(history) <= 50
    assert all(r.target in ids and set(r.history) <= ids for r in ds.valid)
    assert (ds.items["category"] != "").mean() > 0.95
    assert "Lab & Scientific Products" in set(ds.items["category"])


@pytest.mark.real
@pytest.mark.parametrize(
    ("name", "prefix", "n_items", "n_valid", "n_test", "valid_users", "test_users"),
    [
        ("Industrial_and_Scientific", "ind", 3686, 4532, 4533, 2011, 1987),
        ("Office_Products", "off", 3459, 4866, 4866, 1795, 2024),
    ],
)
def test_industrial_office(
    root: Path, name: str, prefix: str, n_items: int, n_valid: int, n_test: int, valid_users: int, test_users: int
) -> None:
    ds = D.load_domain(name, root)  # type: ignore[arg-type]
    _check_items(ds.items, prefix + r":\d+", n_items)
    assert ds.train is None
    assert (len(ds.valid), len(ds.test)) == (n_valid, n_test)
    assert len({r.user for r in ds.valid}) == valid_users and len({r.user for r in ds.test}) == test_users
    ids = set(ds.items["id"])
    assert all(r.target in ids and set(r.history) <= ids and 1 <= len(r.history) <= 10 for r in ds.valid + ds.test)


@pytest.mark.real
def test_toys(root: Path) -> None:
    items = D.load_toys(root)
    _check_items(items, r"toy:\d+", 11252)
    assert items["id"].iloc[-1] == "toy:11251"
    assert (items["title"].str.len() > 0).all()


@pytest.mark.real
def test_clothing(root: Path) -> None:
    ds = D.load_clothing(root)
    _check_items(ds.items, r"clo:[0-9A-Z]{10}", 3393)
    assert len(ds.ratings) == 13689 and ds.ratings["user"].nunique() == 5377
    assert ds.ratings["item_id"].nunique() == 3393 and ds.ratings["item_id"].isin(ds.items["id"]).all()
    assert ds.ratings["rating"].between(1, 5).all()
    assert len(ds.also_viewed) == 9198
    assert len(set(ds.also_viewed["item_id"]) | set(ds.also_viewed["other_id"])) == 2192


@pytest.fixture(scope="module")
def hm_articles(root: Path) -> pd.DataFrame:
    return D.load_hm_articles(root)


@pytest.mark.real
def test_hm_articles(hm_articles: pd.DataFrame) -> None:
    _check_items(hm_articles, r"hm:\d{10}", 105542)
    first = hm_articles.iloc[0]
    assert first["id"] == "hm:0108775015" and first["title"] == "Strap top"
    assert first["text"].startswith("Strap top. Vest top. Black. Womens Everyday Basics. Jersey top")
    assert first["category"] == "Garment Upper body" and first["colour"] == "Black"
    assert hm_articles["category"].value_counts()["Garment Upper body"] == 42741
    assert hm_articles["index_group_name"].value_counts()["Ladieswear"] == 39737
    assert {"product_type_name", "index_group_name", "garment_group_name", "colour"} <= set(hm_articles.columns)


@pytest.mark.real
def test_hm_transactions_and_baskets(root: Path, hm_articles: pd.DataFrame) -> None:
    tx = D.load_hm_transactions(root)
    assert len(tx) == 240311
    assert tx["customer_id"].nunique() == 68984 and tx["item_id"].nunique() == 17986
    assert pd.api.types.is_datetime64_any_dtype(tx["t_dat"])
    assert str(tx["t_dat"].min().date()) == "2020-09-16" and str(tx["t_dat"].max().date()) == "2020-09-22"
    assert tx["item_id"].isin(hm_articles["id"]).all()  # zfill(10) join
    assert len(D.hm_baskets(tx, min_items=1)) == 77143
    # README's 51,569 counts rows (repeat purchases of one article included); unique items give 48,849.
    baskets = D.hm_baskets(tx)
    assert len(baskets) == 48849
    assert all(len(b) == len(set(b)) >= 2 for b in baskets)


@pytest.mark.real
def test_online_retail(root: Path) -> None:
    items, tx = D.load_online_retail(root, which="both")
    assert list(items.columns[:4]) == ITEM_COLUMNS and items["id"].is_unique
    assert items["id"].str.fullmatch(r"or:[0-9A-Z]*\d[0-9A-Z]*").all()
    fees = r"(?i)(dotcom )?postage|(next day )?carriage|manual|discount|bank charges|this is a test product\.?"
    assert not items["text"].str.fullmatch(fees).any()
    assert items.set_index("id").loc["or:85123A", "title"] == "White Hanging Heart T-Light Holder"
    assert list(tx.columns[:6]) == ["invoice", "customer_id", "item_id", "timestamp", "quantity", "price"]
    assert tx["invoice"].str.fullmatch(r"\d+").all() and (tx["quantity"] > 0).all()
    assert tx["customer_id"].str.fullmatch(r"\d+").all()
    assert tx["item_id"].isin(items["id"]).all()
    assert str(tx["timestamp"].min()) == "2009-12-01 07:45:00" and str(tx["timestamp"].max()) == "2011-12-09 12:50:00"
    # The overlap week 2010-12-01..09 appears once: the first invoice of the 2010-12 file keeps its 7 lines.
    assert (tx["invoice"] == "536365").sum() == 7
    _, later = D.load_online_retail(root, which="2010-12_2011-12")
    _, earlier = D.load_online_retail(root, which="II_2009-12_2010-12")
    assert str(later["timestamp"].min()) == "2010-12-01 08:26:00"
    assert len(tx) == len(later) + int((earlier["timestamp"] < "2010-12-01").sum())
    # README: 397,924 / 407,695 purchase rows with a customer, 4,339 / 4,314 customers, 3,665 / 4,017 codes per
    # year; fees, postage, samples and zero-price lines are removed here, the week of overlap counted once.
    assert (len(later), len(earlier), len(tx)) == (396241, 406297, 788093)
    assert (later["customer_id"].nunique(), earlier["customer_id"].nunique()) == (4334, 4285)
    assert tx["customer_id"].nunique() == 5852 and len(items) == 4617


@pytest.mark.real
def test_polyvore(root: Path) -> None:
    ds = D.load_polyvore(root)
    _check_items(ds.items, r"pv:\d+_\d+", 9537)
    assert "slot" in ds.items.columns and set(ds.items["slot"]) <= {"upper", "bottom", "shoe", "bag", "accessory"}
    # README: MCN valid 1,196 + train subset 1,114 named outfits; one valid outfit has only empty names.
    splits = pd.Series([o.split for o in ds.outfits]).value_counts().to_dict()
    assert splits == {"valid": 1195, "train": 1114}
    assert sum(len(o.item_ids) for o in ds.outfits) == len(ds.items)
    assert all(len(o.item_ids) == len(o.slots) == len(o.categories) and len(set(o.slots)) == len(o.slots)
               for o in ds.outfits)
    assert len(ds.category_outfits) == 16138 and len(ds.category_outfit_info) == 16138
    assert ds.items["text"].iloc[0] == "river island blue embroidered cut playsuit. Rompers."


@pytest.mark.real
def test_completejourney(root: Path) -> None:
    ds = D.load_completejourney(root)
    _check_items(ds.products, r"cj:\d+", 92331)
    assert len(ds.coupons) == 981 and all(k.startswith("cj-coupon:") for k in ds.coupons)
    # 116,204 links repeat (coupon, product) pairs across campaigns: 105,262 unique pairs, 16 of them name one
    # of the 6 coupon products without a products.csv row.
    assert sum(map(len, ds.coupons.values())) == 105246
    assert len(ds.campaign_coupons) == 27 and len(ds.campaigns) == 27
    assert set(ds.coupon_campaigns) == set(ds.coupons)
    assert all(c in ds.campaign_coupons[k] for c, ks in ds.coupon_campaigns.items() for k in ks)
    # README counts (6,589 receipts, 2,102 redemptions) include the ~20% of households held out.
    assert len(ds.received) == 5364 and len(ds.redemptions) == 1762
    assert len(ds.transactions) == 75000 and len(ds.demographics) == 801
    assert ds.demographics.index.name == "household_id"
    examples = D.coupon_examples(ds)
    assert list(examples.columns) == ["household_id", "coupon_id", "campaign_id", "label"]
    assert len(examples) == 652012 and examples["label"].sum() == 1739  # 1,762 redemptions, 23 repeats
    train, valid = D.household_split(examples, frac_valid=0.2, seed=0)
    assert len(train) + len(valid) == len(examples)
    assert not set(train["household_id"]) & set(valid["household_id"])
    assert 0.1 < valid["household_id"].nunique() / examples["household_id"].nunique() < 0.3


@pytest.mark.real
def test_uci_coupon(root: Path) -> None:
    frame = D.load_uci_coupon(root)
    assert len(frame) == 12684
    assert round(frame["label"].mean(), 3) == 0.568
    assert {"text", "coupon_text", "user_text", "label", "coupon", "destination", "Y"} <= set(frame.columns)
    assert frame["text"].str.contains("Coupon: ").all() and frame["text"].str.contains("Driver: ").all()
    assert not frame["coupon_text"].str.contains("Driver").any()
    assert frame["text"].iloc[0].startswith("Driving alone, no urgent destination, sunny 55F at 2PM.")


@pytest.mark.real
def test_chinese(root: Path) -> None:
    counts = {s: len(D.load_chinese_titles(root, split=s)) for s in ("train", "dev", "test", "jd")}
    assert counts == {"train": 6000, "dev": 998, "test": 1000, "jd": 501}  # the JD file holds 501 titles
    assert len(D.load_chinese_titles(root, split="all")) == sum(counts.values())
    items = D.load_amazon_cn(root)
    _check_items(items, r"cn:\d+", 96)
    assert re.search(r"[\u4e00-\u9fff]", items["title"].iloc[0])
    ratings = D.load_amazon_cn_ratings(root)
    assert len(ratings) == 44852 and ratings["user"].nunique() == 8923
    assert ratings["item_id"].isin(items["id"]).all()


@pytest.mark.real
def test_amexpert(root: Path) -> None:
    ds = D.load_amexpert(root)
    _check_items(ds.items, r"amx:\d+", 74066)
    assert len(ds.train) == 78369 and len(ds.test) == 50226 and "label" not in ds.test.columns
    assert ds.train["customer_id"].nunique() == 1428 and ds.train["coupon_id"].nunique() == 866
    assert round(ds.train["label"].mean() * 100, 2) == 0.93
    assert ds.train["coupon_id"].isin(list(ds.coupons)).all()
    assert len(ds.demographics) == 760 and len(ds.campaigns) == 28  # README says 27; the file holds 28


@pytest.mark.real
def test_instacart(root: Path) -> None:
    ds = D.load_instacart(root)
    _check_items(ds.items, r"ic:\d+", 9288)
    assert len(ds.baskets) == len(ds.basket_ids) == 3214
    assert sum(map(len, ds.baskets)) == 32290
    assert set().union(*ds.baskets) <= set(ds.items["id"])


@pytest.mark.real
def test_mango(root: Path) -> None:
    ds = D.load_mango(root)
    _check_items(ds.items, r"mango:[0-9]+-[0-9A-Z]+", 9222)
    assert len(ds.outfits) == 7842
    sizes = [len(o.item_ids) for o in ds.outfits]
    assert (min(sizes), max(sizes), sum(sizes)) == (2, 15, 43582)
    assert ds.items["slot"].value_counts()["Home"] == 61
