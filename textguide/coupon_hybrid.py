"""Coupon hybrid: the priors a user would start from plus the adapter's personal signal, combined by a learned
logistic layer.

Features of a (household, coupon) pair (:data:`FEATURES`):

- ``prior_logit``: logit of the coupon's smoothed redemption rate in the training households
  (``(redeemed + a * g) / (received + a)``, ``g`` the global rate; an unknown coupon gets ``g``);
- household activity *before the campaign starts* (log1p counts): past redemptions, campaigns received,
  baskets, spend (what a CRM system knows about a household);
- ``adapter_logit``: the trained adapter's user-coupon affinity; ``text_cosine``: history-coupon text similarity.

:class:`CouponHybrid` standardises them and applies ``w . x + b``. It is fitted on households the adapter never
trained on (the selection split) and saved as plain JSON in the guide's adapter metadata (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

#: feature columns in model order
FEATURES = ("prior_logit", "adapter_logit", "text_cosine", "past_redemptions", "past_campaigns", "past_baskets",
            "past_spend")
#: household activity fields a caller may give ``Guide.rank_coupons(activity=...)`` (raw counts / money)
ACTIVITY = {"redemptions": "past_redemptions", "campaigns": "past_campaigns", "baskets": "past_baskets",
            "spend": "past_spend"}


def smoothed_rates(coupon_index: np.ndarray, labels: np.ndarray, n_coupons: int, strength: float = 20.0
                   ) -> tuple[np.ndarray, float]:
    """Per-coupon redemption rate shrunk towards the global rate ``g``: ``(pos + strength * g) / (n + strength)``."""
    labels = np.asarray(labels, dtype=np.float64)
    g = float(labels.mean())
    cnt = np.bincount(coupon_index, minlength=n_coupons)
    pos = np.bincount(coupon_index, weights=labels, minlength=n_coupons)
    return (pos + strength * g) / (cnt + strength), g


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def household_activity(received: pd.DataFrame, campaigns: pd.DataFrame, redemptions: pd.DataFrame,
                       transactions: pd.DataFrame) -> pd.DataFrame:
    """For each received (household_id, campaign_id): what was known about the household when the campaign
    started (no later information, so no label leaks): log1p of redemptions, campaigns received, baskets and
    spend strictly before the campaign's start date."""
    start = campaigns.set_index("campaign_id")["start_date"]
    rc = received[["household_id", "campaign_id"]].drop_duplicates().reset_index(drop=True)
    t = rc["campaign_id"].map(start).to_numpy("datetime64[ns]")

    def before(events: pd.DataFrame, time_col: str, value: str | None) -> np.ndarray:
        out = np.zeros(len(rc))
        groups = {h: g for h, g in events.groupby("household_id")}
        for h, idx in rc.groupby("household_id").indices.items():
            g = groups.get(h)
            if g is None:
                continue
            g = g.sort_values(time_col)
            times = g[time_col].to_numpy("datetime64[ns]")
            cum = np.r_[0.0, np.cumsum(np.ones(len(g)) if value is None else g[value].to_numpy(np.float64))]
            out[idx] = cum[np.searchsorted(times, t[idx], side="left")]
        return out

    baskets = transactions.groupby(["household_id", "basket_id"], as_index=False).agg(
        timestamp=("timestamp", "min"), spend=("sales_value", "sum"))
    got = rc.assign(start=t)
    return pd.DataFrame({
        "household_id": rc["household_id"], "campaign_id": rc["campaign_id"],
        "past_redemptions": np.log1p(before(redemptions.drop_duplicates(["household_id", "coupon_id", "campaign_id"]),
                                            "date", None)),
        "past_campaigns": np.log1p(before(got.rename(columns={"start": "date"}), "date", None)),
        "past_baskets": np.log1p(before(baskets, "timestamp", None)),
        "past_spend": np.log1p(np.maximum(before(baskets, "timestamp", "spend"), 0.0)),
    })


def activity_features(activity: Mapping[str, float] | None, defaults: Mapping[str, float]) -> dict[str, float]:
    """A caller's raw activity dict (:data:`ACTIVITY` keys) as log1p features; missing fields take ``defaults``
    (the training mean), unknown fields raise."""
    activity = dict(activity or {})
    unknown = sorted(set(activity) - set(ACTIVITY))
    if unknown:
        raise ValueError(f"unknown activity fields {unknown}; use {sorted(ACTIVITY)} (counts before today, spend)")
    out = {}
    for key, col in ACTIVITY.items():
        if key in activity and activity[key] is not None:
            v = float(activity[key])
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"activity[{key!r}] must be a finite number >= 0, got {activity[key]!r}")
            out[col] = float(np.log1p(v))
        else:
            out[col] = float(defaults[col])
    return out


@dataclass
class CouponHybrid:
    """``logit = sum_j w_j * (x_j - mean_j) / std_j + bias`` over :data:`FEATURES`, with the coupon priors."""

    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    prior: dict[str, float]
    global_rate: float
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Hybrid logits for a feature matrix (n, len(features)) in :attr:`features` order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"features must be (n, {len(self.features)}) in order {self.features}, got {x.shape}")
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return z @ np.asarray(self.weights) + self.bias

    def prior_logit(self, coupon_ids: list[str]) -> np.ndarray:
        """Logit of each coupon's smoothed redemption rate; the global rate for coupons never seen in training."""
        return logit(np.array([self.prior.get(c, self.global_rate) for c in coupon_ids]))

    def defaults(self) -> dict[str, float]:
        """Training means: the value of a feature nobody gave."""
        return dict(zip(self.features, self.mean))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, prior: dict[str, float], global_rate: float, l2: float = 1e-3,
            iters: int = 50, features: list[str] | None = None) -> "CouponHybrid":
        """Logistic regression (Newton / IRLS, L2 ``l2`` on standardised weights, not on the bias); the columns
        of ``x`` are ``features`` (default :data:`FEATURES`)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise ValueError("the hybrid needs both redeemed and unredeemed examples to fit")
        mean, std = x.mean(0), x.std(0)
        std[std < 1e-9] = 1.0
        z = np.c_[(x - mean) / std, np.ones(len(x))]
        w = np.zeros(z.shape[1])
        w[-1] = float(logit(y.mean()))
        reg = np.r_[np.full(z.shape[1] - 1, l2 * len(x)), 0.0]
        for _ in range(iters):
            p = 1 / (1 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) + reg * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        names = list(features or FEATURES)
        if len(names) != x.shape[1]:
            raise ValueError(f"x has {x.shape[1]} columns but {len(names)} feature names {names}")
        return cls(w[:-1].tolist(), float(w[-1]), mean.tolist(), std.tolist(), dict(prior), float(global_rate), names)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "mean": list(self.mean), "std": list(self.std), "global_rate": self.global_rate,
                "prior": dict(self.prior)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CouponHybrid":
        missing = [k for k in ("features", "weights", "bias", "mean", "std", "global_rate", "prior") if k not in d]
        if missing:
            raise ValueError(f"coupon hybrid metadata lacks {missing}; retrain with `textguide train completejourney`")
        if not len(d["features"]) == len(d["weights"]) == len(d["mean"]) == len(d["std"]):
            raise ValueError("coupon hybrid metadata: features, weights, mean and std must have the same length")
        return cls([float(v) for v in d["weights"]], float(d["bias"]), [float(v) for v in d["mean"]],
                   [float(v) for v in d["std"]], {str(k): float(v) for k, v in d["prior"].items()},
                   float(d["global_rate"]), [str(f) for f in d["features"]])
