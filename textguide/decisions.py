"""Per-category serving decisions: which method serves each category of each task, and the evidence for it.

A guide serves every (task, category) pair with one *adapter weight* ``w``: the score of an item is
``w * adapter cosine + (1 - w) * text cosine``, so ``w = 1`` is the trained adapter, ``w = 0`` text
similarity and anything between a blend. The weights live in the adapter section of the guide's manifest
(``adapter_meta["decisions"][task][category]``), each with where it came from and its evidence:

========== ===========================================================================================
source     meaning
========== ===========================================================================================
trained    the category was present when the adapter was trained: the task's validated choice
onboarded  the category came later (``Guide.onboard``): text similarity until interactions show otherwise
observed   ``Guide.observe`` measured it on the category's own interactions (paired bootstrap over users)
user       set by hand (``Guide.set_decision``)
========== ===========================================================================================

A category with no recorded decision gets the validated choice when it was present at training (or when
the guide does not know which categories were, as with guides trained before decisions existed), and
text similarity otherwise. A query that touches several categories (an unfiltered ``recommend`` whose
history spans categories, a coupon list across families) is served with the most conservative of their
weights (the smallest).

Switching rule (:func:`decide`): the candidate weight with the best mean per-user metric on a *selection*
half of the users is compared with the current weight on the other, *held-out* half; it replaces the
current weight only when the 95 % paired-bootstrap interval of the per-user difference lies above zero.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "BLEND_WEIGHTS",
    "Decision",
    "SOURCES",
    "blend_scores",
    "blend_search",
    "combine",
    "decide",
    "method_label",
    "paired_bootstrap",
    "resolve",
    "weight_of_method",
]

SOURCES = ("trained", "onboarded", "observed", "user")
#: adapter weights compared by :func:`decide` besides text (0) and adapter (1)
BLEND_WEIGHTS = (0.25, 0.5, 0.75)
KEY = "decisions"
TRAINED_KEY = "trained_categories"


def method_label(weight: float) -> str:
    """``"adapter"`` for 1, ``"text"`` for 0, ``"blend"`` otherwise."""
    return "adapter" if weight >= 1.0 else "text" if weight <= 0.0 else "blend"


def hits_label(weight: float) -> str:
    """What ``Hits.method`` says: ``"adapter"``, ``"text"`` or ``"blend:<adapter weight>"``."""
    label = method_label(weight)
    return f"blend:{weight:g}" if label == "blend" else label


def weight_of_method(method: str, weight: float | None = None) -> float:
    """The adapter weight of a method name (``"blend"`` needs ``weight`` in (0, 1))."""
    if method == "adapter":
        return 1.0
    if method == "text":
        return 0.0
    if method == "blend":
        if weight is None or not 0.0 < float(weight) < 1.0:
            raise ValueError(f"method='blend' needs a weight strictly between 0 and 1 (the adapter's share), got {weight!r}")
        return float(weight)
    raise ValueError(f"method must be 'adapter', 'text' or 'blend', got {method!r}")


@dataclass
class Decision:
    """How one category of one task is served: the adapter weight, where it came from, and the evidence."""

    weight: float
    source: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"decision weight must be a number in [0, 1] (the adapter's share), got {self.weight!r}")
        if self.source not in SOURCES:
            raise ValueError(f"decision source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        self.weight = float(self.weight)

    @property
    def method(self) -> str:
        """``"adapter"``, ``"text"`` or ``"blend"``."""
        return method_label(self.weight)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (also what ``Guide.info`` shows)."""
        return {"method": self.method, "weight": self.weight, "source": self.source, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Decision":
        """Inverse of :meth:`to_dict` (``method`` is derived from ``weight``)."""
        try:
            return cls(float(d["weight"]), str(d["source"]), dict(d.get("evidence") or {}))
        except KeyError as e:
            raise ValueError(f"decision {dict(d)!r} lacks the field {e.args[0]!r}") from None


def now() -> str:
    """The current UTC time, ISO 8601 (when a decision was recorded)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ the record
def recorded(meta: Mapping[str, Any], task: str) -> dict[str, Decision]:
    """The decisions recorded for ``task`` in an adapter section (category -> Decision)."""
    return {c: Decision.from_dict(d) for c, d in (meta.get(KEY, {}).get(task) or {}).items()}


def with_decision(meta: Mapping[str, Any], task: str, category: str, decision: Decision) -> dict[str, Any]:
    """A copy of the adapter section with ``decision`` recorded for (task, category)."""
    if not isinstance(category, str) or not category:
        raise ValueError(f"category must be a non-empty string, got {category!r}")
    out = dict(meta)
    table = {t: dict(v) for t, v in out.get(KEY, {}).items()}
    table.setdefault(task, {})[category] = decision.to_dict()
    out[KEY] = table
    return out


def trained_categories(meta: Mapping[str, Any], task: str) -> set[str] | None:
    """Categories present when the adapter was trained for ``task`` (None: not recorded)."""
    if task == "outfit" and meta.get("slots"):
        return {str(s) for s in meta["slots"]}
    cats = meta.get(TRAINED_KEY)
    return None if cats is None else {str(c) for c in cats}


def validated_weight(meta: Mapping[str, Any], task: str, has_task: bool) -> float:
    """The task's validated choice: 1 (adapter) unless training recorded that text validated better."""
    return 1.0 if has_task and meta.get("methods", {}).get(task, "adapter") == "adapter" else 0.0


def resolve(meta: Mapping[str, Any], task: str, category: str | None, has_task: bool) -> Decision:
    """The decision that serves ``category`` of ``task`` (recorded, else derived as the module docstring says)."""
    base = validated_weight(meta, task, has_task)
    if not has_task:
        return Decision(0.0, "trained", {"note": f"no trained {task!r} adapter"})
    if category is None:
        return Decision(base, "trained", {"note": "no category: the task's validated choice"})
    found = recorded(meta, task).get(category)
    if found is not None:
        return found
    trained = trained_categories(meta, task)
    if trained is None or category in trained:
        return Decision(base, "trained", {"note": "present at training: the task's validated choice"})
    return Decision(0.0, "onboarded", {"note": "not seen in training and not yet observed: text similarity"})


def combine(meta: Mapping[str, Any], task: str, categories: Iterable[str | None], has_task: bool) -> float:
    """Adapter weight for a query touching ``categories``: the smallest of theirs (the conservative choice)."""
    cats = list(dict.fromkeys(categories))
    if not cats:
        cats = [None]
    return min(resolve(meta, task, c, has_task).weight for c in cats)


# ------------------------------------------------------------------------------------------ scoring
def blend_scores(text: np.ndarray, adapter: np.ndarray | None, weight: float) -> np.ndarray:
    """``weight * adapter + (1 - weight) * text`` (``adapter`` may be None when ``weight`` is 0)."""
    if weight <= 0.0 or adapter is None:
        if weight > 0.0:
            raise ValueError("adapter scores are needed for a weight above 0")
        return np.asarray(text, dtype=np.float32)
    if weight >= 1.0:
        return np.asarray(adapter, dtype=np.float32)
    return (weight * np.asarray(adapter) + (1.0 - weight) * np.asarray(text)).astype(np.float32)


def blend_search(text_index: Any, q_text: np.ndarray, adapted_index: Any, q_adapter: np.ndarray, weight: float,
                 k: int, *, where: Any = None, exclude: Sequence[Sequence[str]] | None = None,
                 pool: int = 100) -> tuple[list[list[str]], np.ndarray]:
    """Top-``k`` by the blended score for each query row, like :meth:`ItemIndex.search`.

    ``text_index`` and ``adapted_index`` are :class:`~textguide.index.ItemIndex` objects over the same live ids
    (the guide's index and its adapted item vectors). Candidates are the union of each space's top
    ``max(pool, 10 k)``; each is then scored exactly in both spaces (adapter queries L2-normalised, so both
    scores are cosines)."""
    q_text = np.atleast_2d(np.asarray(q_text, dtype=np.float32))
    q_adapter = np.atleast_2d(np.asarray(q_adapter, dtype=np.float32))
    q_adapter = q_adapter / np.maximum(np.linalg.norm(q_adapter, axis=1, keepdims=True), 1e-12)
    m = max(pool, 10 * k)
    ids_t, _ = text_index.search(q_text, m, where=where, exclude=exclude)
    ids_a, _ = adapted_index.search(q_adapter, m, where=where, exclude=exclude)
    out_ids, out_scores = [], np.full((len(q_text), k), -np.inf, np.float32)
    for i in range(len(q_text)):
        cand = list(dict.fromkeys(ids_t[i] + ids_a[i]))
        if not cand:
            out_ids.append([])
            continue
        s = blend_scores(text_index.vectors(cand) @ q_text[i], adapted_index.vectors(cand) @ q_adapter[i], weight)
        order = np.argsort(-s, kind="stable")[:k]
        out_ids.append([cand[j] for j in order])
        out_scores[i, : len(order)] = s[order]
    width = max((len(x) for x in out_ids), default=0)
    return out_ids, out_scores[:, :width]


# ------------------------------------------------------------------------------------------ the switching rule
def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-user differences, resampling users with replacement."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 1 or len(diff) == 0:
        raise ValueError(f"diff must be a non-empty 1-d array of per-user differences, got shape {diff.shape}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, 256):  # bounded memory for many users
        b = min(256, n_boot - s)
        means[s:s + b] = diff[rng.integers(0, len(diff), size=(b, len(diff)))].mean(1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def decide(
    per_user: Mapping[float, np.ndarray],
    current: float,
    select: np.ndarray,
    *,
    metric: str = "Recall@10",
    min_users: int = 20,
    n_boot: int = 2000,
    seed: int = 0,
    extra: Mapping[str, Mapping[float, np.ndarray]] | None = None,
) -> Decision:
    """The switching rule: pick the best weight on the selection users, switch only on a significant gain.

    ``per_user[w]`` holds each user's metric (e.g. hit@10) when served with adapter weight ``w``; it must
    contain ``current``. ``select`` is a boolean mask of the users used to pick the candidate; the others are
    held out, and the candidate replaces ``current`` only when the 95 % paired-bootstrap interval of its mean
    gain over ``current`` on them is above 0 (and there are at least ``min_users`` held-out users). ``extra``
    (metric name -> same layout, e.g. NDCG@10) is reported, not used. The returned decision's source is
    ``"observed"``; its evidence has every weight's mean on both parts, the interval and the verdict.
    """
    if current not in per_user:
        raise ValueError(f"per_user must include the current weight {current}")
    weights = sorted(per_user)
    n = len(per_user[current])
    for w in weights:
        if len(per_user[w]) != n:
            raise ValueError(f"per_user[{w}] has {len(per_user[w])} users, per_user[{current}] has {n}")
    select = np.asarray(select, dtype=bool)
    if select.shape != (n,):
        raise ValueError(f"select must be a boolean mask over the {n} users, got shape {select.shape}")
    held = ~select
    means_sel = {w: float(np.mean(per_user[w][select])) if select.any() else math.nan for w in weights}
    means_held = {w: float(np.mean(per_user[w][held])) if held.any() else math.nan for w in weights}
    # the best on the selection users; ties keep the current weight, then prefer the one closer to text
    best = max(weights, key=lambda w: (means_sel[w], w == current, -w))
    evidence: dict[str, Any] = {
        "metric": metric, "users": {"select": int(select.sum()), "held_out": int(held.sum())},
        "select": {hits_label(w): round(means_sel[w], 6) for w in weights},
        "held_out": {hits_label(w): round(means_held[w], 6) for w in weights},
        "current": hits_label(current), "candidate": hits_label(best), "observed_at": now(),
    }
    for name, table in (extra or {}).items():
        evidence[f"held_out_{name}"] = {hits_label(w): round(float(np.mean(table[w][held])), 6)
                                        for w in weights if held.any()}
    chosen = current
    if best == current:
        evidence["verdict"] = f"kept {hits_label(current)}: it is the best on the selection users"
    elif held.sum() < min_users:
        evidence["verdict"] = (f"kept {hits_label(current)}: {int(held.sum())} held-out users, fewer than "
                               f"min_users={min_users}")
    else:
        diff = per_user[best][held] - per_user[current][held]
        lo, hi = paired_bootstrap(diff, n_boot, seed)
        evidence.update(gain=round(float(diff.mean()), 6), ci95=[round(lo, 6), round(hi, 6)])
        if lo > 0:
            chosen = best
            evidence["verdict"] = (f"switched to {hits_label(best)}: held-out {metric} {means_held[best]:.4f} vs "
                                   f"{means_held[current]:.4f}, 95% CI of the gain [{lo:+.4f}, {hi:+.4f}]")
        else:
            evidence["verdict"] = (f"kept {hits_label(current)}: {hits_label(best)} gains {diff.mean():+.4f} "
                                   f"{metric} on held-out users, 95% CI [{lo:+.4f}, {hi:+.4f}] includes 0")
    evidence["switched"] = chosen != current
    return Decision(chosen, "observed", evidence)


def candidate_weights(has_adapter: bool) -> list[float]:
    """Weights :func:`decide` compares: text, the blends and the adapter (text only without an adapter)."""
    return [0.0, *BLEND_WEIGHTS, 1.0] if has_adapter else [0.0]


def split_users(n: int, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` of ``n`` users (at least 1 and at most n - 1 when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    m = int(round(fraction * n))
    if n >= 2:
        m = min(max(m, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[order[:m]] = True
    return mask


def rank_metrics(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user hit@k (Recall@k with one target) and NDCG@k from 0-based ranks."""
    ranks = np.asarray(ranks)
    hit = (ranks < k).astype(np.float64)
    ndcg = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return hit, ndcg


def category_of_items(categories: Sequence[Any]) -> list[str | None]:
    """Category values as strings (missing -> None)."""
    out: list[str | None] = []
    for c in categories:
        if c is None or (isinstance(c, float) and math.isnan(c)) or str(c) == "":
            out.append(None)
        else:
            out.append(str(c))
    return out


def ranks_by_weight(
    text_q: np.ndarray,
    text_items: np.ndarray,
    adapter_q: np.ndarray | None,
    adapter_items: np.ndarray | None,
    targets: Sequence[int],
    exclude: Sequence[Sequence[int]] | None,
    weights: Sequence[float],
    adapter_extra: np.ndarray | None = None,
) -> dict[float, np.ndarray]:
    """0-based rank of each query's target among the candidate columns, for every adapter weight.

    ``text_q`` (n, d) and ``text_items`` (C, d) are unit text vectors; ``adapter_q`` (n, d') and ``adapter_items``
    (C, d') the adapter's queries and item vectors (queries are L2-normalised here). ``targets[i]`` and
    ``exclude[i]`` are column indices into the C candidates (ties count against the target). ``adapter_extra``
    (n, C): a term the guide serves with the adapter alone (weight 1; the outfit title word overlap), added there."""
    from .metrics import rank_of_target

    text = np.asarray(text_q, np.float32) @ np.asarray(text_items, np.float32).T
    adapted = None
    if adapter_q is not None and adapter_items is not None:
        q = np.asarray(adapter_q, np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        adapted = q @ np.asarray(adapter_items, np.float32).T

    def scores(w: float) -> np.ndarray:
        blended = blend_scores(text, adapted, w)
        return blended + adapter_extra if adapter_extra is not None and w >= 1.0 else blended

    return {w: rank_of_target(scores(w), np.asarray(targets), exclude) for w in weights}
