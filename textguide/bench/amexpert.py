"""AmExpert 2019 coupon redemption as a benchmark: a time split by campaign, the priors and activity a retailer
knows before a campaign starts, LightGBM over them, the text adapter, and the hybrid of trees and adapter.

Split (by campaign start, no campaign in two parts): campaigns that start up to 2013-02-16 (26-30, 1-8) train,
9-12 select (the hybrid's logistic layer, thresholds), 13 (2013-05-19, 22,606 rows) is the report campaign.
Every feature of a row uses only labelled rows of campaigns that *ended* before its campaign started, and the
training split's coupon / category / brand rates (out of fold by campaign on training rows; 80 % of report
coupons never appear in training, so the category and brand rates of a coupon's items are features too).
The adapter's "user" is a (customer, campaign) pair: its history is the items of coupons the customer redeemed
in campaigns that ended before, its profile the verbalised demographics; a coupon is its items (one row per
distinct item text: category + brand).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..coupon_hybrid import CouponHybrid, logit, smoothed_rates
from ..encoder import EmbeddingCache, TextEncoder, encode_texts
from ..metrics import grouped_auc, roc_auc
from ..tasks.coupon import CouponTask, coupon_logits_indexed

SELECT_CAMPAIGNS = (9, 10, 11, 12)
REPORT_CAMPAIGNS = (13,)
#: tabular features of a row, in column order (LightGBM and the hybrid)
FEATURES = ("coupon_prior", "category_prior", "brand_prior", "coupon_items", "campaign_x", "campaign_days",
            "past_redemptions", "past_received", "past_campaigns", "age", "income", "family_size", "rented", "married")
MAX_ITEMS = 20  # distinct item texts kept per coupon / history


@dataclass
class AmExpertBench:
    """Rows with ``part`` (train / select / report), tabular features and the adapter's training task."""

    frame: pd.DataFrame  # customer_id, coupon_id, campaign_id, label, part, user (row of task.user_histories), coupon
    features: np.ndarray  # (rows, len(FEATURES))
    task: CouponTask
    info: dict[str, Any] = field(default_factory=dict)

    def mask(self, part: str) -> np.ndarray:
        return (self.frame["part"] == part).to_numpy()


def split_by_campaign(rows: pd.DataFrame) -> np.ndarray:
    """train / select / report per row (:data:`SELECT_CAMPAIGNS`, :data:`REPORT_CAMPAIGNS`, the rest train)."""
    c = rows["campaign_id"].to_numpy()
    return np.where(np.isin(c, REPORT_CAMPAIGNS), "report", np.where(np.isin(c, SELECT_CAMPAIGNS), "select", "train"))


def past_activity(rows: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
    """Per row: the customer's redemptions, coupons received and campaigns in labelled rows of campaigns that
    ended strictly before this row's campaign started (log1p counts)."""
    span = campaigns.set_index("campaign_id")
    start = rows["campaign_id"].map(span["start_date"]).to_numpy("datetime64[ns]")
    per = rows.groupby(["customer_id", "campaign_id"]).agg(red=("label", "sum"), got=("label", "size")).reset_index()
    per["end"] = per["campaign_id"].map(span["end_date"]).to_numpy("datetime64[ns]")
    out = np.zeros((len(rows), 3))
    groups = {k: g.sort_values("end") for k, g in per.groupby("customer_id")}
    for cust, idx in rows.groupby("customer_id").indices.items():
        g = groups[cust]
        ends = g["end"].to_numpy("datetime64[ns]")
        k = np.searchsorted(ends, start[idx], side="left")  # campaigns that ended before the start
        for j, col in enumerate((g["red"], g["got"], np.ones(len(g)))):
            cum = np.r_[0.0, np.cumsum(np.asarray(col, dtype=np.float64))]
            out[idx, j] = cum[k]
    return pd.DataFrame(np.log1p(out), columns=["past_redemptions", "past_received", "past_campaigns"],
                        index=rows.index)


def _demographics(demo: pd.DataFrame, customers: pd.Series) -> pd.DataFrame:
    d = demo.reindex(customers.to_numpy())
    age = d["age_range"].map({"18-25": 21, "26-35": 30, "36-45": 40, "46-55": 50, "56-70": 63, "70+": 75})
    return pd.DataFrame({
        "age": pd.to_numeric(age, errors="coerce"),
        "income": pd.to_numeric(d["income_bracket"], errors="coerce"),
        "family_size": pd.to_numeric(d["family_size"].str.rstrip("+"), errors="coerce"),
        "rented": pd.to_numeric(d["rented"], errors="coerce"),
        "married": (d["marital_status"] == "Married").astype(float).where(d["marital_status"].notna()),
    }).to_numpy(np.float64)


def profile_text(demo: pd.DataFrame, customer: str) -> str:
    """'Customer aged 46-55, married, owns the home, family of 2, no children listed, income bracket 5.'"""
    if customer not in demo.index:
        return "Customer with no demographics on file."
    r = demo.loc[customer]
    parts = [f"aged {r['age_range']}" if isinstance(r["age_range"], str) else "",
             str(r["marital_status"]).lower() if isinstance(r["marital_status"], str) else "",
             "rents the home" if r["rented"] == "1" else "owns the home",
             f"family of {r['family_size']}", f"{r['no_of_children']} children" if isinstance(r["no_of_children"], str)
             else "no children listed", f"income bracket {r['income_bracket']}"]
    return "Customer " + ", ".join(p for p in parts if p) + "."


def prepare_amexpert(encoder: TextEncoder, cache: EmbeddingCache | None = None, seed: int = 0) -> AmExpertBench:
    """The benchmark (see the module docstring)."""
    from .datasets.amexpert import load_amexpert

    ds = load_amexpert()
    rows = ds.train.reset_index(drop=True).copy()
    rows["part"] = split_by_campaign(rows)
    train = rows["part"] == "train"
    # items: one row per distinct text (category + brand); a coupon is its distinct texts
    texts = ds.items.set_index("id")["text"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(texts.tolist()))}
    item_emb = encode_texts(encoder, list(vocab), cache=cache, show_progress=False)
    coupon_ids = sorted(set(rows["coupon_id"]))
    coupon_row = {c: i for i, c in enumerate(coupon_ids)}
    coupon_texts = [list(dict.fromkeys(vocab[texts[i]] for i in ds.coupons.get(c, []) if i in texts.index))
                    for c in coupon_ids]
    coupon_items = [ts[:MAX_ITEMS] if ts else [0] for ts in coupon_texts]
    rows["coupon"] = rows["coupon_id"].map(coupon_row)
    # coupon / category / brand priors from the training rows only
    cat = ds.items.set_index("id")["category"]
    brand = ds.items.set_index("id")["brand"]

    def majority(values: pd.Series, c: str) -> str:
        items = [i for i in ds.coupons.get(c, []) if i in values.index]
        return values.loc[items].mode().iloc[0] if items else ""

    c_cat = {c: majority(cat, c) for c in coupon_ids}
    c_brand = {c: majority(brand, c) for c in coupon_ids}
    y_tr = rows.loc[train, "label"].to_numpy()

    def prior(keys: pd.Series) -> np.ndarray:
        """Smoothed redemption rate of each row's key in the training campaigns; a training row's own campaign
        is left out (out of fold), so the trees see priors as noisy as the selection and report rows get."""
        codes, uniques = pd.factorize(keys)
        tr_mask, camp = train.to_numpy(), rows["campaign_id"].to_numpy()
        rate, _ = smoothed_rates(codes[tr_mask], y_tr, len(uniques))
        out = rate[codes]
        for k in np.unique(camp[tr_mask]):
            keep = tr_mask & (camp != k)
            r_k, _ = smoothed_rates(codes[keep], rows["label"].to_numpy()[keep], len(uniques))
            out[camp == k] = r_k[codes[camp == k]]
        return logit(out)

    span = ds.campaigns.set_index("campaign_id")
    days = (rows["campaign_id"].map(span["end_date"]) - rows["campaign_id"].map(span["start_date"])).dt.days
    activity = past_activity(rows, ds.campaigns)
    features = np.c_[
        prior(rows["coupon_id"]), prior(rows["coupon_id"].map(c_cat)), prior(rows["coupon_id"].map(c_brand)),
        np.log1p([len(coupon_texts[c]) for c in rows["coupon"]]),
        (rows["campaign_id"].map(span["campaign_type"]) == "X").to_numpy(float), days.to_numpy(float),
        activity.to_numpy(), _demographics(ds.demographics, rows["customer_id"]),
    ]
    # adapter users: (customer, campaign) with the redeemed items of campaigns that ended before
    pairs = rows[["customer_id", "campaign_id"]].drop_duplicates().reset_index(drop=True)
    rows["user"] = rows.set_index(["customer_id", "campaign_id"]).index.map(
        pd.Series(np.arange(len(pairs)), index=pd.MultiIndex.from_frame(pairs))).to_numpy()
    redeemed = rows[rows["label"] == 1]
    end = redeemed["campaign_id"].map(span["end_date"])
    by_cust = {k: g for k, g in redeemed.assign(end=end).groupby("customer_id")}
    starts = pairs["campaign_id"].map(span["start_date"])
    histories = []
    for cust, start in zip(pairs["customer_id"], starts):
        g = by_cust.get(cust)
        past = [] if g is None else g.loc[g["end"] < start, "coupon"].tolist()
        histories.append(list(dict.fromkeys(t for c in past for t in coupon_items[c]))[-MAX_ITEMS:])
    profiles = encode_texts(encoder, [profile_text(ds.demographics, c) for c in pairs["customer_id"]], cache=cache,
                            show_progress=False)
    sel = (rows["part"] == "select").to_numpy()
    tr = train.to_numpy()
    task = CouponTask(item_emb, histories, coupon_items, rows["label"].to_numpy()[tr], profiles,
                      rows["user"].to_numpy()[tr], rows["coupon"].to_numpy()[tr], rows["label"].to_numpy()[sel],
                      rows["user"].to_numpy()[sel], rows["coupon"].to_numpy()[sel])
    info = {p: {"rows": int((rows["part"] == p).sum()), "redeemed": int(rows.loc[rows["part"] == p, "label"].sum())}
            for p in ("train", "select", "report")}
    info |= {"item_texts": len(vocab), "coupons": len(coupon_ids), "users": len(pairs)}
    return AmExpertBench(rows, features.astype(np.float64), task, info)


def metrics(bench: AmExpertBench, scores: np.ndarray, part: str = "report") -> dict[str, float]:
    """AUC over the part's rows and per-coupon AUC (mean over coupons with both outcomes)."""
    m = bench.mask(part)
    y = bench.frame.loc[m, "label"].to_numpy()
    per_coupon, _ = grouped_auc(y, scores, bench.frame.loc[m, "coupon_id"].to_numpy())
    return {"AUC": roc_auc(y, scores), "CouponAUC": float(per_coupon)}


def gbt_scores(bench: AmExpertBench, seed: int = 0) -> np.ndarray:
    """LightGBM over :data:`FEATURES`, trained on the training campaigns; probabilities for every row."""
    import lightgbm

    tr = bench.mask("train")
    gbt = lightgbm.LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=50,
                                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1,
                                  random_state=seed)
    gbt.fit(bench.features[tr], bench.frame.loc[tr, "label"].to_numpy())
    return gbt.predict_proba(bench.features)[:, 1]


def adapter_logits(bench: AmExpertBench, model: Any) -> np.ndarray:
    """The adapter's (customer, campaign) x coupon logits for every row."""
    t = bench.task
    return coupon_logits_indexed(model, t.item_emb, t.user_histories, t.coupon_items, bench.frame["user"].to_numpy(),
                                 bench.frame["coupon"].to_numpy(), t.profiles)


def hybrid_scores(bench: AmExpertBench, gbt: np.ndarray, adapter: np.ndarray) -> np.ndarray:
    """A logistic layer over [tree logit, adapter logit], fitted on the selection campaigns; logits for every row."""
    x = np.c_[logit(gbt), adapter]
    sel = bench.mask("select")
    h = CouponHybrid.fit(x[sel], bench.frame.loc[sel, "label"].to_numpy(), {}, float(bench.task.labels.mean()),
                         features=["gbt_logit", "adapter_logit"])
    return h.logits(x)
