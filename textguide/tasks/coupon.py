"""Coupon redemption: everything about the ``coupon`` task.

Data: :class:`CouponTask`, (user row, coupon row, redeemed?) examples; a user is the item rows they bought (and
optional profile features), a coupon the item rows it covers. The model part is ``MultiTaskAdapter.coupon``
(pooled user and coupon vectors through an MLP, :mod:`textguide.adapters`), trained with weighted binary
cross-entropy. Scores: :func:`coupon_logits` (pairs), :func:`coupon_logits_indexed` (many pairs of few users and
coupons), :func:`coupon_probabilities` (one user, many coupons). Text baseline: cosine between the mean history
and the coupon's mean product embedding (:func:`text_cosines`). Selection metric: AUC. Serving:
:meth:`Coupon.serve`, behind ``Guide.rank_coupons`` (with the fitted hybrid of :mod:`textguide.coupon_hybrid`
when the guide holds one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AdapterConfig, AttentionPool, MultiTaskAdapter, require_keys
from ..coupon_hybrid import CouponHybrid, activity_features
from ..decisions import blend_scores, category_of_items, hits_label
from ..inputs import as_embeddings, binary_labels, gather, index_array, index_lists, pad
from ..metrics import roc_auc, text_queries
from .base import Toy, check_dim, toy_items

if TYPE_CHECKING:
    from ..guide import Guide, Hits
    from ..index import ItemIndex
    from ..training import TrainConfig

__all__ = ["COUPON", "Coupon", "CouponHead", "CouponTask", "coupon_inputs", "coupon_logits", "coupon_logits_indexed",
           "coupon_probabilities", "text_cosines", "verbalise_profile"]

logger = logging.getLogger("textguide")


@dataclass
class CouponTask:
    """Coupon redemption: example ``i`` pairs user row ``user_index[i]`` with coupon row ``coupon_index[i]``.

    ``user_histories[u]`` are the items user ``u`` bought, ``coupon_items[c]`` the items coupon ``c`` covers,
    ``profiles[u]`` optional numeric user features (standardised). Loss: binary cross-entropy with
    ``pos_weight = negatives / positives``. Validation: AUC on the ``valid_*`` examples (any user/coupon rows,
    including ones never seen in training).
    """

    item_emb: np.ndarray
    user_histories: list[list[int]]
    coupon_items: list[list[int]]
    labels: np.ndarray
    profiles: np.ndarray | None
    user_index: np.ndarray
    coupon_index: np.ndarray
    valid_labels: np.ndarray | None = None
    valid_user_index: np.ndarray | None = None
    valid_coupon_index: np.ndarray | None = None
    kind: ClassVar[str] = "coupon"

    def __post_init__(self) -> None:
        self.item_emb = as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.user_histories = index_lists(self.user_histories, n, "user_histories", min_len=0)
        self.coupon_items = index_lists(self.coupon_items, n, "coupon_items")
        n_users, n_coupons = len(self.user_histories), len(self.coupon_items)
        self.labels = binary_labels(self.labels, "labels")
        self.user_index = index_array(self.user_index, n_users, "user_index", len(self.labels), "labels")
        self.coupon_index = index_array(self.coupon_index, n_coupons, "coupon_index", len(self.labels), "labels")
        n_pos = int(self.labels.sum())
        if n_pos == 0 or n_pos == len(self.labels):
            raise ValueError(f"labels need both classes, got {n_pos} positives of {len(self.labels)}")
        self.pos_weight = (len(self.labels) - n_pos) / n_pos
        if self.profiles is not None:
            self.profiles = np.asarray(self.profiles, dtype=np.float32)
            if self.profiles.ndim != 2 or len(self.profiles) != n_users:
                raise ValueError(
                    f"profiles must be (n_users={n_users}, profile_dim), one row per user_histories row; "
                    f"got {self.profiles.shape}"
                )
            if not np.isfinite(self.profiles).all():
                raise ValueError("profiles contain NaN or inf; impute and standardise them first")
        given = [self.valid_labels is not None, self.valid_user_index is not None, self.valid_coupon_index is not None]
        if any(given) and not all(given):
            raise ValueError("give valid_labels, valid_user_index and valid_coupon_index together, or none")
        if all(given):
            self.valid_labels = binary_labels(self.valid_labels, "valid_labels")
            m = len(self.valid_labels)
            self.valid_user_index = index_array(self.valid_user_index, n_users, "valid_user_index", m, "valid_labels")
            self.valid_coupon_index = index_array(
                self.valid_coupon_index, n_coupons, "valid_coupon_index", m, "valid_labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "coupon")``."""
        rows = rng.integers(len(self.labels), size=batch_size)
        users, coupons = self.user_index[rows], self.coupon_index[rows]
        batch = coupon_inputs(
            self.item_emb,
            [self.user_histories[u] for u in users],
            [self.coupon_items[c] for c in coupons],
            None if self.profiles is None else self.profiles[users],
            max_history,
            rng,
        )
        batch["labels"] = torch.from_numpy(self.labels[rows].astype(np.float32))
        batch["pos_weight"] = torch.tensor(self.pos_weight, dtype=torch.float32)
        return batch

    def valid_scores(self, model: MultiTaskAdapter | None) -> np.ndarray:
        """Scores of the validation examples: the adapter's logits, or the text cosines (``model`` None)."""
        if model is None:
            return text_cosines(self.item_emb, self.user_histories, self.coupon_items)[
                self.valid_user_index, self.valid_coupon_index]
        return coupon_logits_indexed(model, self.item_emb, self.user_histories, self.coupon_items,
                                     self.valid_user_index, self.valid_coupon_index, self.profiles)

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """AUC on the validation examples; None without them (or with one class only)."""
        if self.valid_labels is None or len(np.unique(self.valid_labels)) < 2:
            return None
        return roc_auc(self.valid_labels, self.valid_scores(model))


# ------------------------------------------------------------------------------------------ the head
class CouponHead(nn.Module):
    """User (pooled history + profile MLP) and coupon (pooled products) -> MLP on [u, c, u*c, |u-c|] -> logit."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        d = config.dim
        self.scale = math.sqrt(d)
        self.profile_dim = config.profile_dim
        self.user_pool = AttentionPool(d)
        self.coupon_pool = AttentionPool(d)
        self.profile = (
            nn.Sequential(nn.Linear(config.profile_dim, d), nn.GELU(), nn.Linear(d, d)) if config.profile_dim else None
        )
        self.mlp = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1))

    def forward(
        self,
        user_vectors: torch.Tensor,
        user_mask: torch.Tensor,
        coupon_vectors: torch.Tensor,
        coupon_mask: torch.Tensor,
        profile: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.score(self.encode_user(user_vectors, user_mask, profile), self.encode_coupon(coupon_vectors, coupon_mask))

    def encode_user(self, user_vectors: torch.Tensor, user_mask: torch.Tensor, profile: torch.Tensor | None) -> torch.Tensor:
        """User representation (B, dim): pooled adapted purchases + profile MLP."""
        u = self.user_pool(user_vectors, user_mask) * self.scale
        if self.profile is not None:
            if profile is None:  # unknown profile: all-zero (standardised) features
                profile = u.new_zeros(u.shape[0], self.profile_dim)
            u = u + self.profile(profile.to(u.dtype))
        return u

    def encode_coupon(self, coupon_vectors: torch.Tensor, coupon_mask: torch.Tensor) -> torch.Tensor:
        """Coupon representation (B, dim): pooled adapted vectors of the products it covers."""
        return self.coupon_pool(coupon_vectors, coupon_mask) * self.scale

    def score(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Redemption logits (B,) for paired user and coupon representations."""
        return self.mlp(torch.cat([u, c, u * c, (u - c).abs()], dim=-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------ inputs and scores
def coupon_inputs(
    item_emb: np.ndarray,
    histories: list[list[int]],
    coupons: list[list[int]],
    profiles: np.ndarray | None,
    max_items: int,
    rng: np.random.Generator | None,
) -> dict[str, torch.Tensor]:
    """Coupon batch tensors; coupons covering more than ``max_items`` products are subsampled
    (randomly with ``rng``, evenly spaced without)."""
    capped = []
    for items in coupons:
        if len(items) > max_items:
            if rng is None:
                keep = np.linspace(0, len(items) - 1, max_items).round().astype(np.int64)
            else:
                keep = np.sort(rng.choice(len(items), size=max_items, replace=False))
            items = [items[i] for i in keep]
        capped.append(items)
    hist, hist_mask = pad(histories, max_items)
    coup, coup_mask = pad(capped, max_items)
    batch = {
        "user_history": gather(item_emb, hist),
        "user_mask": torch.from_numpy(hist_mask),
        "coupon_items": gather(item_emb, coup),
        "coupon_mask": torch.from_numpy(coup_mask),
    }
    if profiles is not None:
        batch["profile"] = torch.from_numpy(np.asarray(profiles, dtype=np.float32))
    return batch


def coupon_probabilities(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    user_history: Sequence[int],
    coupons: Sequence[Sequence[int]],
    profile: np.ndarray | None = None,
) -> np.ndarray:
    """P(redeem) (M,) for one user (purchased item indices, optional profile) and M coupons (covered items)."""
    if len(user_history) == 0 and profile is None:
        raise ValueError("empty user_history and no profile: pass at least one purchased item or a profile")
    profiles = None
    if profile is not None:
        profiles = np.repeat(np.asarray(profile, dtype=np.float32).reshape(1, -1), len(coupons), axis=0)
    logits = coupon_logits(model, item_emb, [list(user_history)] * len(coupons), coupons, profiles)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


@torch.inference_mode()
def coupon_logits(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    histories: Sequence[Sequence[int]],
    coupons: Sequence[Sequence[int]],
    profiles: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Redemption logits (B,) for B (user history, coupon items[, profile row]) pairs; histories may be empty."""
    model.eval()
    emb = as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    histories = index_lists(histories, len(emb), "user_history", min_len=0)
    coupons = index_lists(coupons, len(emb), "coupons")
    out = []
    for start in range(0, len(coupons), batch_size):
        stop = start + batch_size
        profile = None if profiles is None else profiles[start:stop]
        batch = coupon_inputs(
            emb, histories[start:stop], coupons[start:stop], profile, model.config.max_history, rng=None
        )
        out.append(model(batch, "coupon")[0])
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@torch.inference_mode()
def coupon_logits_indexed(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    user_histories: Sequence[Sequence[int]],
    coupon_items: Sequence[Sequence[int]],
    user_index: np.ndarray,
    coupon_index: np.ndarray,
    profiles: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Logits for many (user row, coupon row) pairs, encoding each user and each coupon once.

    Same result as :func:`coupon_logits` on the expanded pairs (in eval mode), much faster when users
    and coupons repeat: ``profiles`` has one row per user.
    """
    model.eval()
    model.check_task("coupon")
    emb = as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    head = model.coupon
    users, coupons = [], []
    for start in range(0, len(user_histories), batch_size):
        b = coupon_inputs(emb, [list(h) for h in user_histories[start:start + batch_size]],
                          [[0]] * len(user_histories[start:start + batch_size]),
                          None if profiles is None else profiles[start:start + batch_size],
                          model.config.max_history, rng=None)
        users.append(head.encode_user(model.item_vectors(b["user_history"], "coupon"), b["user_mask"], b.get("profile")))
    for start in range(0, len(coupon_items), batch_size):
        chunk = [list(c) for c in coupon_items[start:start + batch_size]]
        b = coupon_inputs(emb, [[] for _ in chunk], chunk, None, model.config.max_history, rng=None)
        coupons.append(head.encode_coupon(model.item_vectors(b["coupon_items"], "coupon"), b["coupon_mask"]))
    u, c = torch.cat(users), torch.cat(coupons)
    ui, ci = torch.as_tensor(np.array(user_index, dtype=np.int64)), torch.as_tensor(np.array(coupon_index, dtype=np.int64))
    out = [head.score(u[ui[s:s + 8192]], c[ci[s:s + 8192]]) for s in range(0, len(ui), 8192)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def text_cosines(emb: np.ndarray, histories: Sequence[Sequence[int]], coupon_items: Sequence[Sequence[int]]
                 ) -> np.ndarray:
    """The text baseline, (users, coupons): cosine between the mean history vector and the coupon's mean
    product vector (0 for an empty history)."""
    return text_queries(emb, histories) @ text_queries(emb, coupon_items).T


def verbalise_profile(profile: dict[str, Any]) -> str:
    """A user profile as text, e.g. ``{"age": "45-54", "kids_count": 2}`` -> "age: 45-54. kids count: 2"."""
    parts = []
    for key, value in profile.items():
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
            continue
        parts.append(f"{str(key).replace('_', ' ')}: {value}")
    return ". ".join(parts) if parts else "unknown customer"


def family(index: ItemIndex, rows: Sequence[int]) -> str | None:
    """A coupon's family: the most common category of its products (None without categories)."""
    if "category" not in index.metadata.columns:
        return None
    values = [c for c in category_of_items(index.metadata["category"].iloc[list(rows)].tolist()) if c]
    return max(dict.fromkeys(values), key=values.count) if values else None


class Coupon:
    """The ``coupon`` task (see the module docstring)."""

    name = "coupon"
    data_type = CouponTask
    select_metric = "AUC"
    head_name = "coupon"  # MultiTaskAdapter.coupon
    fine_tunes = False  # Guide.observe(fine_tune=True) may fine-tune on this task's data

    def head(self, config: AdapterConfig) -> nn.Module:
        """The task's part of the model."""
        return CouponHead(config)

    def forward(self, model: MultiTaskAdapter, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``MultiTaskAdapter.forward(batch, "coupon")``: logits, and with ``labels`` the weighted binary
        cross-entropy (``pos_weight``)."""
        require_keys(batch, ("user_history", "user_mask", "coupon_items", "coupon_mask"), self.name)
        logits = model.coupon_logit(batch["user_history"], batch["user_mask"], batch["coupon_items"],
                                    batch["coupon_mask"], batch.get("profile"))
        if "labels" not in batch:
            return logits, None
        loss = F.binary_cross_entropy_with_logits(
            logits, batch["labels"].to(logits.dtype), pos_weight=batch.get("pos_weight")
        )
        return logits, loss

    def check(self, model: MultiTaskAdapter, data: CouponTask) -> None:
        """Raise ValueError unless ``data`` fits ``model`` (embedding dimension, profile features)."""
        check_dim(model, data, self.name)
        found = 0 if data.profiles is None else data.profiles.shape[1]
        if found != model.config.profile_dim:
            raise ValueError(
                f"tasks['coupon'] has {found} profile features but the model has "
                f"profile_dim={model.config.profile_dim}; build AdapterConfig(profile_dim={found})"
            )

    def validate(self, data: CouponTask, model: MultiTaskAdapter | None = None) -> float:
        """AUC on the validation examples (text cosines when ``model`` is None)."""
        if data.valid_labels is None:
            raise ValueError("this CouponTask has no validation split (valid_labels / valid_user_index / ...)")
        return roc_auc(data.valid_labels, data.valid_scores(model))

    def serve(self, guide: Guide, history: list[str], coupons: Sequence[str] | dict[str, Sequence[str]] | None, *,
              profile: dict[str, Any] | None, activity: dict[str, float] | None, on_unknown: str,
              method: str) -> Hits:
        """The body of ``Guide.rank_coupons``."""
        from ..guide import Hits

        rows, unknown = guide.rows(history, "history", on_unknown) if len(history) else ([], [])
        if coupons is None:
            coupons = list(guide.coupons)
        if isinstance(coupons, dict):
            spec = {c: list(v) for c, v in coupons.items()}
        else:
            missing = [c for c in coupons if c not in guide.coupons]
            if missing:
                raise KeyError(
                    f"unknown coupon ids {missing[:5]}; register them with guide.add_coupons({{id: [product ids]}}) "
                    f"or pass a mapping coupon id -> product ids"
                )
            spec = {c: guide.coupons[c] for c in coupons}
        if not spec:
            raise ValueError("no coupons to rank: pass coupon ids or a mapping, or register coupons first")
        coupon_rows, gone = [], []
        for cid, items in list(spec.items()):
            if not items:
                raise ValueError(f"coupon {cid!r} covers no products; give the product ids it applies to")
            if isinstance(coupons, dict):  # a caller's mapping: unknown products are the caller's error
                coupon_rows.append(guide.rows(items, f"coupon {cid!r}", "error")[0])
                continue
            left = [guide.index.row_of[i] for i in items if i in guide.index]  # products removed since registration
            if left:
                coupon_rows.append(left)
            else:
                gone.append(cid)
                del spec[cid]
        if gone:
            logger.warning("skipping coupons with no products left in the guide (all removed): %s", gone[:5])
            if not spec:
                raise ValueError(f"no coupons to rank: every product of coupons {gone[:5]} was removed from the guide; "
                                 f"register coupons covering live products with guide.add_coupons(..., replace=True)")
        # the decision of the coupons' families (each coupon's most common product category; the conservative one)
        weight = guide.adapter_weight(self.name, method, [family(guide.index, r) for r in coupon_rows], [])
        adapter_probs, text_probs = self.scores(guide, rows, list(spec), coupon_rows, profile, activity,
                                                adapter=weight > 0, text=weight < 1.0)
        probs = blend_scores(text_probs, adapter_probs, weight) if weight < 1.0 else adapter_probs
        order = np.argsort(-probs, kind="stable")
        ids = list(spec)
        hits = Hits([ids[i] for i in order], probs[order].astype(np.float32),
                    [{"id": ids[i], "items": len(coupon_rows[i])} for i in order])
        hits.method, hits.skipped = hits_label(weight), unknown + gone
        return hits

    def scores(self, guide: Guide, rows: list[int], coupon_ids: list[str], coupon_rows: list[list[int]],
               profile: dict[str, Any] | None, activity: dict[str, float] | None, *, adapter: bool, text: bool
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The served scores of one user's coupons, ``(adapter probabilities, text scores)`` (None when not asked):
        the adapter's (the guide's coupon hybrid when it has one) and the text cosine mapped to [0, 1]."""
        emb = guide.index.embeddings
        adapter_probs = text_probs = None
        if adapter:
            guide.require_task(self.name)
            prof = self.profile_vector(guide, profile)
            if not rows and prof is None:
                raise ValueError("empty history and no profile: give at least one purchased item or a profile")
            if "coupon_hybrid" in guide.adapter_meta:
                adapter_probs = self.hybrid_probabilities(guide, coupon_ids, rows, coupon_rows, prof, activity)
            else:
                adapter_probs = coupon_probabilities(guide.adapter, emb, rows, coupon_rows, prof)
        if text:
            if not rows:
                raise ValueError("history is empty: the text method needs at least one purchased item")
            text_probs = ((text_cosines(emb, [rows], coupon_rows)[0] + 1) / 2).astype(np.float32)
        return adapter_probs, text_probs

    def observe_metric(self, k: int) -> str:
        """The metric ``Guide.observe`` decides on: each household's AUC of its redeemed coupons of the family."""
        return "AUC"

    def check_observable(self, guide: Guide, category: str) -> None:
        """Refuse a coupon family no registered coupon belongs to, before ``Guide.observe`` does any work."""
        if category not in {family(guide.index, [guide.index.row_of[i] for i in items if i in guide.index])
                            for items in guide.coupons.values()}:
            raise ValueError(f"no registered coupon is of family {category!r} (a coupon's family is the most common "
                             f"category of its products); register its coupons with guide.add_coupons first")

    def observe_users(self, guide: Guide, records: Sequence[dict[str, Any]], category: str,
                      weights: Sequence[float], k: int) -> tuple[dict[float, np.ndarray], dict[str, dict], int]:
        """Per-user evidence on coupon family ``category`` for ``Guide.observe(task="coupon")``.

        Each record is one user: ``{"history": [item ids, oldest first], "offered": [coupon ids],
        "redeemed": [coupon ids]}`` (optionally ``"profile"`` and ``"activity"`` as in ``rank_coupons``); the
        coupons must be registered (``guide.add_coupons``). Only the offered coupons of the family count, and
        only users with at least one redeemed and one unredeemed coupon of it. Returns, for every adapter weight,
        each user's AUC of redeemed over unredeemed coupons (ties count half), the same for hit@``k`` (a redeemed
        coupon in the top ``k``), and the number of the family's coupons seen. ``Guide.observe`` has already
        checked the family (:meth:`check_observable`)."""
        auc: dict[float, list[float]] = {w: [] for w in weights}
        hit: dict[float, list[float]] = {w: [] for w in weights}
        seen: set[str] = set()
        for n, rec in enumerate(records):
            if not isinstance(rec, dict) or not {"history", "offered", "redeemed"} <= set(rec):
                raise ValueError(f"record {n} must be a dict with 'history', 'offered' and 'redeemed' (coupon ids), "
                                 f"got {rec!r:.80}")
            unknown = [c for c in list(rec["offered"]) + list(rec["redeemed"]) if c not in guide.coupons]
            if unknown:
                raise KeyError(f"unknown coupon ids in record {n}: {unknown[:5]}; register them with guide.add_coupons")
            rows = guide.rows(rec["history"], f"record {n} history", "error")[0] if len(rec["history"]) else []
            redeemed = set(rec["redeemed"])
            ids, coupon_rows = [], []
            for c in dict.fromkeys(rec["offered"]):
                left = [guide.index.row_of[i] for i in guide.coupons[c] if i in guide.index]
                if left and family(guide.index, left) == category:
                    ids.append(c)
                    coupon_rows.append(left)
            y = np.array([c in redeemed for c in ids])
            if not rows or y.all() or not y.any():
                continue
            seen.update(ids)
            a, t = self.scores(guide, list(rows), ids, coupon_rows, rec.get("profile"), rec.get("activity"),
                               adapter=True, text=True)
            for w in weights:
                s = blend_scores(t, a, w)
                pos, neg = s[y][:, None], s[~y][None, :]
                auc[w].append(float(((pos > neg) + 0.5 * (pos == neg)).mean()))
                hit[w].append(float(y[np.argsort(-s, kind="stable")[:k]].any()))
        if len(auc[weights[0]]) < 2:
            raise ValueError(f"need at least 2 records with a redeemed and an unredeemed coupon of family "
                             f"{category!r} and a known history, got {len(auc[weights[0]])}")
        return ({w: np.asarray(v) for w, v in auc.items()}, {f"hit@{k}": {w: np.asarray(v) for w, v in hit.items()}},
                len(seen))

    @staticmethod
    def hybrid_probabilities(guide: Guide, coupon_ids: list[str], rows: list[int], coupon_rows: list[list[int]],
                             profile: np.ndarray | None, activity: dict[str, float] | None) -> np.ndarray:
        """The guide's saved coupon hybrid's probabilities (features in
        :data:`textguide.coupon_hybrid.FEATURES`)."""
        hybrid = CouponHybrid.from_dict(guide.adapter_meta["coupon_hybrid"])
        emb = guide.index.embeddings
        profiles = None if profile is None else np.repeat(profile.reshape(1, -1), len(coupon_rows), axis=0)
        adapter = coupon_logits(guide.adapter, emb, [list(rows)] * len(coupon_rows), coupon_rows, profiles)
        cols = {"prior_logit": hybrid.prior_logit(coupon_ids), "adapter_logit": adapter,
                "text_cosine": text_cosines(emb, [rows], coupon_rows)[0],
                **activity_features(activity, hybrid.defaults())}
        x = np.column_stack([np.broadcast_to(cols[f], len(coupon_ids)) for f in hybrid.features])
        return (1 / (1 + np.exp(-hybrid.logits(x)))).astype(np.float32)

    @staticmethod
    def profile_vector(guide: Guide, profile: dict[str, Any] | None) -> np.ndarray | None:
        """The adapter's profile input for a dict of user fields: the embedded verbalised profile (zeros when
        none is given; None when the adapter reads no profile)."""
        dim = guide.adapter.config.profile_dim
        if not dim:
            return None
        if profile is None:
            return np.zeros(dim, np.float32)
        if not isinstance(profile, dict):
            raise ValueError(f"profile must be a dict of user fields, got {type(profile).__name__}")
        vec = guide.encoder.encode([verbalise_profile(profile)], show_progress=False)[0]
        if len(vec) != dim:
            raise ValueError(f"profile vector has dimension {len(vec)}, adapter expects {dim}")
        return vec

    @staticmethod
    def category_field(meta: dict[str, Any]) -> str:
        """The metadata field whose values the coupon decisions are kept per (coupon families)."""
        return "category"

    # -- the toy problem of the shared tests: users redeem the coupons of the one category they buy
    def toy(self, seed: int = 0) -> Toy:
        return Toy(toy_items(24, seed), seed=seed)

    def toy_data(self, toy: Toy, item_emb: np.ndarray) -> CouponTask:
        rng = np.random.default_rng(toy.seed)
        cats = toy.items["category"].to_numpy()
        names = sorted(set(cats))
        by_cat = {c: np.flatnonzero(cats == c) for c in names}
        # coupon j covers 2 random items of category names[j % 3]; user u buys 3 items of a *shuffled* category,
        # so the redeemed coupons are not the text-nearest ones
        coupons = [rng.choice(by_cat[names[j % len(names)]], size=2, replace=False).tolist() for j in range(9)]
        likes = {c: names[(i + 1) % len(names)] for i, c in enumerate(names)}
        users, label_of = [], []
        for u in range(30):
            bought = names[u % len(names)]
            users.append(rng.choice(by_cat[bought], size=3, replace=False).tolist())
            label_of.append([int(names[j % len(names)] == likes[bought]) for j in range(len(coupons))])
        pairs = [(u, c) for u in range(len(users)) for c in range(len(coupons))]
        ui = np.array([p[0] for p in pairs])
        ci = np.array([p[1] for p in pairs])
        y = np.array([label_of[u][c] for u, c in pairs])
        valid = ui >= 24
        return CouponTask(item_emb, users, coupons, y[~valid], None, ui[~valid], ci[~valid],
                          y[valid], ui[valid], ci[valid])

    def rank(self, data: CouponTask, example: int, model: MultiTaskAdapter, k: int) -> list[int]:
        user = int(np.unique(data.valid_user_index)[example])
        probs = coupon_probabilities(model, data.item_emb, data.user_histories[user], data.coupon_items)
        return np.argsort(-probs, kind="stable")[:k].tolist()

    def ask(self, guide: Guide, data: CouponTask, example: int, k: int) -> list[int]:
        user = int(np.unique(data.valid_user_index)[example])
        ids = guide.index.ids
        spec = {f"coupon-{c}": [ids[r] for r in items] for c, items in enumerate(data.coupon_items)}
        hits = guide.rank_coupons([ids[r] for r in data.user_histories[user]], spec, method="adapter")
        return [int(c.removeprefix("coupon-")) for c in hits.ids[:k]]


COUPON = Coupon()
