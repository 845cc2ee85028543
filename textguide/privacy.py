"""Differentially private training of an adapter (DP-SGD with Opacus), protecting each *user*.

The privacy unit is the user (a shopper, a household), not the example: every step samples users
independently with probability ``q`` (Poisson sampling) and takes **one** randomly chosen training example of
each sampled user. That example's gradient is clipped to ``max_grad_norm`` (per-example = per-user clipping),
Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` is added to their sum, and AdamW takes
the step (Opacus ``DPOptimizer``). Opacus' accountant (RDP or PRV) picks the smallest noise that keeps the whole
planned run within ``(epsilon, delta)`` and reports the epsilon spent. Adding or removing one user with all of
their examples changes the released weights by an amount that guarantee covers.

Per-example gradients come from ``torch.func`` (``vmap`` over ``grad``), because Opacus' ``GradSampleModule``
cannot wrap :class:`~textguide.adapters.MultiTaskAdapter`: its hooks assume every layer sees a batch-first input,
while the adapter scores whole catalogs through the shared item tower, uses ``nn.TransformerEncoderLayer`` (its
``MultiheadAttention`` would have to be swapped for Opacus' own) and has parameters outside supported layers.
So that one example's loss depends on that example alone, the private loss differs from the usual one:

* recommend: softmax over the target and ``negatives`` uniformly sampled items *per example* (not the whole
  catalog, nor other examples' targets);
* coupon: binary cross-entropy with a fixed ``pos_weight`` (the usual one is a count over every household).

The outfit task (in-batch negatives) is refused. Training runs exactly the planned number of steps and keeps the
last weights: early stopping on the validation users, a time budget, checkpoints and ``resume`` are refused or
ignored, because each would make the number of steps (what the accountant counts) depend on data or the clock.

Example::

    dp = DPConfig(epsilon=8.0)
    result, record = train_private(model, {"recommend": task}, TrainConfig(steps=1000), dp, users)
    record.epsilon <= 8.0   # spent, from the accountant
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapters import MultiTaskAdapter
from .tasks.coupon import CouponTask
from .tasks.recommend import SequenceTask
from .training import Task, TrainConfig, TrainResult

__all__ = ["DPConfig", "PrivacyRecord", "check_private", "describe", "dp_from_args", "dp_step", "per_example_grads",
           "sample_users", "train_private"]

logger = logging.getLogger("textguide")

ACCOUNTANTS = ("rdp", "prv")
PRIVATE_TASKS = ("recommend", "coupon")


@dataclass
class DPConfig:
    """DP-SGD settings.

    Attributes:
        epsilon: the privacy budget of the whole run (> 0). Give this or ``noise_multiplier``.
        delta: the failure probability; default ``1 / (10 * users)``; must be below ``1 / users``.
        max_grad_norm: per-example (per-user) gradient clipping norm.
        noise_multiplier: noise std / ``max_grad_norm``, instead of ``epsilon`` (the accountant then reports the
            epsilon it gives; 0 means no noise and no privacy, for measurements only).
        accountant: "rdp" (Renyi DP) or "prv" (privacy random variables), both from Opacus.
        negatives: recommend only: uniformly sampled negatives per example.
        pos_weight: coupon only: fixed weight of positive examples in the loss.
    """

    epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    accountant: Literal["rdp", "prv"] = "rdp"
    negatives: int = 63
    pos_weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("DPConfig needs exactly one of epsilon (--dp-epsilon) and noise_multiplier")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"--dp-epsilon must be a finite number > 0, got {self.epsilon}; e.g. --dp-epsilon 8")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier)
                                                      and self.noise_multiplier >= 0):
            raise ValueError(f"DPConfig.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"--dp-delta must be in (0, 1), got {self.delta}; leave it out for 1/(10 x users)")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"--dp-max-grad-norm must be > 0, got {self.max_grad_norm}; e.g. 1.0")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"DPConfig.accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        if not isinstance(self.negatives, int) or self.negatives < 1:
            raise ValueError(f"DPConfig.negatives must be a positive integer, got {self.negatives!r}")
        if not self.pos_weight > 0:
            raise ValueError(f"DPConfig.pos_weight must be > 0, got {self.pos_weight}")


@dataclass
class PrivacyRecord:
    """What a private run guarantees and how (JSON-ready; stored in the guide manifest under ``privacy``)."""

    epsilon: float  # spent over the whole run, from the accountant (inf without noise)
    delta: float
    target_epsilon: float | None
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    steps: int
    sample_rate: float
    expected_batch_size: float
    users: int
    examples: int
    unit: str = "user: Poisson-sampled users, one example per sampled user per step"
    mechanism: str = "DP-SGD (per-example clipping + Gaussian noise, Opacus DPOptimizer), fixed steps, last weights"
    covers: str = "the adapter weights only"
    opacus_version: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (an infinite epsilon is written as the string "inf")."""
        d = asdict(self)
        d["epsilon"] = d["epsilon"] if math.isfinite(d["epsilon"]) else "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrivacyRecord":
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: (float(v) if k == "epsilon" else v) for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------------------------------------
# checks and the plan
# ----------------------------------------------------------------------------------------------------------


def check_private(model: MultiTaskAdapter, tasks: dict[str, Task], config: TrainConfig, dp: DPConfig,
                  users: np.ndarray, regularizer: Any = None) -> tuple[str, np.ndarray]:
    """Refuse what DP-SGD here cannot account for; returns (task name, users as int codes)."""
    if len(tasks) != 1:
        raise ValueError(f"DP training takes one task at a time, got {sorted(tasks)}; train the recipes "
                         f"{', '.join(PRIVATE_TASKS)} one by one (not 'all')")
    name, task = next(iter(tasks.items()))
    model.check_task(name)
    if name not in PRIVATE_TASKS or not isinstance(task, (SequenceTask, CouponTask)):
        raise ValueError(f"DP training supports the tasks {', '.join(PRIVATE_TASKS)}, not {name!r}: its loss mixes "
                         "examples (in-batch negatives), so one example's gradient cannot be clipped alone")
    if model.config.members > 1:
        raise ValueError(f"DP training takes one adapter, not an ensemble of {model.config.members}; build the model "
                         "with AdapterConfig(members=1)")
    if model.config.sharing == "soft" and len(model.config.tasks) > 1:
        raise ValueError("DP training cannot account the soft-sharing penalty between task towers; "
                         "use sharing='hard' or 'experts' (--sharing hard)")
    if regularizer is not None:
        raise ValueError("DP training takes no regularizer (it would add an unclipped, data-dependent gradient); "
                         "transfer methods with a regularizer cannot run privately")
    if config.max_seconds is not None:
        raise ValueError("a time budget cannot bound DP training: the accountant needs the number of steps fixed "
                         "in advance; drop --max-seconds (max_seconds=None) and set --steps")
    if config.resume or config.checkpoint_dir:
        raise ValueError("DP training writes no checkpoints and cannot resume (the accountant's state would have to "
                         "be saved too); drop --checkpoint-dir / --resume")
    users = np.asarray(users)
    if users.shape != (len(task),):
        raise ValueError(f"users must give one user per training example ({len(task)}), got shape {users.shape}")
    if isinstance(task, SequenceTask) and task.weights is not None:
        raise ValueError("DP training samples users uniformly; instance weights (transfer) are not supported")
    codes = np.unique(users, return_inverse=True)[1].reshape(-1)
    n_users = int(codes.max()) + 1 if len(codes) else 0
    if n_users < 2:
        raise ValueError(f"DP training needs at least 2 users, got {n_users}")
    if dp.delta is not None and dp.delta >= 1.0 / n_users:
        raise ValueError(f"--dp-delta {dp.delta:g} must be below 1/users = {1.0 / n_users:.3g} ({n_users} training "
                         f"users): a larger delta allows releasing one user's data; leave it out for 1/(10 x users)")
    if config.batch_size >= n_users:
        raise ValueError(f"batch_size {config.batch_size} must be below the {n_users} training users (Poisson sample "
                         "rate = batch_size / users < 1); lower the batch size")
    return name, codes


def noise_for(dp: DPConfig, sample_rate: float, steps: int, delta: float) -> float:
    """The noise multiplier: given, or the smallest one whose accounted epsilon over ``steps`` is <= the target."""
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            return float(get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=dp.accountant, epsilon_tolerance=0.01))
    except ValueError as e:
        raise ValueError(f"the {dp.accountant} accountant cannot reach --dp-epsilon {dp.epsilon} with delta {delta:.3g}, "
                         f"sample rate {sample_rate:.4g} and {steps} steps ({e}); raise --dp-epsilon, or train fewer "
                         "--steps") from e


def spent_epsilon(accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps, from Opacus' accountant (inf without noise)."""
    if noise == 0:
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(noise, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta=delta))


# ----------------------------------------------------------------------------------------------------------
# per-example losses and gradients
# ----------------------------------------------------------------------------------------------------------


def _pad(lists: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, L) indices of the last ``max_len`` items of each list + bool mask (L >= 1)."""
    width = max(1, min(max_len, max((len(x) for x in lists), default=1)))
    idx, mask = np.zeros((len(lists), width), np.int64), np.zeros((len(lists), width), bool)
    for r, items in enumerate(lists):
        items = items[-max_len:]
        idx[r, :len(items)], mask[r, :len(items)] = items, True
    return idx, mask


def _rows(emb: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(emb[idx], dtype=np.float32))


def private_batch(task: Task, rows: np.ndarray, rng: np.random.Generator, max_history: int,
                  dp: DPConfig) -> dict[str, torch.Tensor]:
    """Tensors of the examples ``rows``, each depending on its own example only (batch-first)."""
    emb = task.item_emb
    if isinstance(task, SequenceTask):
        hist, mask = _pad([task.histories[r] for r in rows], max_history)
        targets = task.targets[rows]
        negatives = rng.integers(len(emb), size=(len(rows), dp.negatives))
        seen = np.where(mask, hist, -1)
        exclude = (negatives[:, :, None] == seen[:, None, :]).any(-1) | (negatives == targets[:, None])
        candidates = np.concatenate([targets[:, None], negatives], axis=1)  # the target in column 0
        return {"history": _rows(emb, hist), "history_mask": torch.from_numpy(mask),
                "candidates": _rows(emb, candidates),
                "exclude": torch.from_numpy(np.concatenate([np.zeros((len(rows), 1), bool), exclude], axis=1))}
    users, coupons = task.user_index[rows], task.coupon_index[rows]
    capped = []
    for c in coupons:
        items = task.coupon_items[c]
        if len(items) > max_history:
            items = [items[i] for i in np.sort(rng.choice(len(items), size=max_history, replace=False))]
        capped.append(items)
    hist, hist_mask = _pad([task.user_histories[u] for u in users], max_history)
    coup, coup_mask = _pad(capped, max_history)
    batch = {"user_history": _rows(emb, hist), "user_mask": torch.from_numpy(hist_mask),
             "coupon_items": _rows(emb, coup), "coupon_mask": torch.from_numpy(coup_mask),
             "labels": torch.from_numpy(task.labels[rows].astype(np.float32))}
    if task.profiles is not None:
        batch["profile"] = torch.from_numpy(task.profiles[users])
    return batch


class _ExampleLoss(nn.Module):
    """The loss of a batch-first private batch, per example (B,): no layer mixes examples."""

    def __init__(self, model: MultiTaskAdapter, task: str, pos_weight: float) -> None:
        super().__init__()
        self.model, self.task, self.pos_weight = model, task, pos_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.model
        if self.task == "recommend":
            query = m.sequence(m.item_vectors(batch["history"], "recommend"), batch["history_mask"])
            cands = m.item_vectors(batch["candidates"], "recommend")
            logits = m.logit_scale_of("recommend") * torch.einsum("bd,bkd->bk", query, cands)
            logits = logits.masked_fill(batch["exclude"], float("-inf"))
            return -torch.log_softmax(logits, dim=-1)[:, 0]
        logit = m.coupon(m.item_vectors(batch["user_history"], "coupon"), batch["user_mask"],
                         m.item_vectors(batch["coupon_items"], "coupon"), batch["coupon_mask"], batch.get("profile"))
        return F.binary_cross_entropy_with_logits(logit, batch["labels"], reduction="none",
                                                  pos_weight=torch.tensor(self.pos_weight))


def per_example_grads(loss: nn.Module, params: dict[str, nn.Parameter], batch: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each example's gradient (B, *shape) of its own loss, for every parameter in ``params``; and the losses."""
    from torch.func import functional_call, grad_and_value, vmap

    detached = {k: p.detach() for k, p in params.items()}

    def one(p: dict[str, torch.Tensor], example: dict[str, torch.Tensor]):
        return functional_call(loss, p, ({k: v.unsqueeze(0) for k, v in example.items()},)).sum()

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels have no vmap rule (a slow loop)
        grads, values = vmap(grad_and_value(one), in_dims=(None, 0), randomness="different")(detached, batch)
    return grads, values


def sample_users(rng: np.random.Generator, codes: np.ndarray, sample_rate: float) -> np.ndarray:
    """One step's example rows: each user (``codes[i]`` is example i's user, 0..U-1) is sampled independently
    with probability ``sample_rate`` (Poisson sampling) and contributes one of their examples, chosen uniformly."""
    order = np.argsort(codes, kind="stable")  # examples grouped by user
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = np.flatnonzero(rng.random(len(counts)) < sample_rate)
    return order[starts[chosen] + (rng.random(len(chosen)) * counts[chosen]).astype(np.int64)]


def dp_step(optimizer: Any, params: dict[str, nn.Parameter], grads: dict[str, torch.Tensor] | None) -> None:
    """One Opacus ``DPOptimizer`` step from per-example gradients (None: nobody was sampled, the step is noise):
    clip each example's gradient to ``max_grad_norm`` (over all parameters together), sum, add Gaussian noise,
    divide by the expected batch size, step the wrapped optimizer."""
    for k, p in params.items():
        p.grad_sample = grads[k] if grads is not None else torch.zeros((1, *p.shape))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _trainable(loss: _ExampleLoss, task: Task, rng: np.random.Generator, max_history: int,
               dp: DPConfig) -> dict[str, nn.Parameter]:
    """The parameters this task's loss reaches (the others get no noise and are not stepped)."""
    loss.zero_grad(set_to_none=True)
    loss(private_batch(task, np.arange(min(2, len(task))), rng, max_history, dp)).sum().backward()
    reached = {k: p for k, p in loss.named_parameters() if p.requires_grad and p.grad is not None}
    loss.zero_grad(set_to_none=True)
    if not reached:
        raise ValueError("every model parameter has requires_grad=False: nothing to train")
    return reached


# ----------------------------------------------------------------------------------------------------------
# the private training loop
# ----------------------------------------------------------------------------------------------------------


def train_private(model: MultiTaskAdapter, tasks: dict[str, Task], config: TrainConfig, dp: DPConfig,
                  users: np.ndarray, regularizer: Any = None) -> tuple[TrainResult, PrivacyRecord]:
    """Train ``model`` on one task with DP-SGD, ``users[i]`` being the user of training example ``i``.

    Runs exactly ``config.steps`` steps (or ``ceil(config.epochs * users / batch_size)``) with expected batch
    size ``config.batch_size`` users, AdamW with ``config.lr`` / ``weight_decay``; keeps the last weights.
    ``config.weighting`` and ``grad_clip`` are not used (one task; clipping is ``dp.max_grad_norm``).
    Validation metrics are computed every ``eval_every`` steps for the history only.
    """
    opacus = _require_opacus()
    from opacus.optimizers import DPOptimizer

    name, codes = check_private(model, tasks, config, dp, users, regularizer)
    task = tasks[name]
    n_users = int(codes.max()) + 1
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * n_users)
    q = config.batch_size / n_users
    steps = config.steps if config.epochs is None else max(1, math.ceil(config.epochs * n_users / config.batch_size))
    noise = noise_for(dp, q, steps, delta)
    logger.info("DP-SGD: %d users, sample rate %.4g, %d steps, noise multiplier %.4g, clip %.3g, delta %.3g",
                n_users, q, steps, noise, dp.max_grad_norm, delta)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    rng = np.random.default_rng(config.seed)
    max_history = model.config.max_history
    loss_fn = _ExampleLoss(model, name, dp.pos_weight)
    model.train()
    params = _trainable(loss_fn, task, rng, max_history, dp)
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    inner = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    optimizer = DPOptimizer(inner, noise_multiplier=noise, max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=config.batch_size, loss_reduction="mean")

    history: list[dict[str, float]] = []
    loss_sum, n_loss, t0 = 0.0, 0, time.monotonic()
    for step in range(1, steps + 1):
        model.train()
        rows = sample_users(rng, codes, q)
        grads = None
        if len(rows):
            grads, values = per_example_grads(loss_fn, params, private_batch(task, rows, rng, max_history, dp))
            loss_sum, n_loss = loss_sum + float(values.sum()), n_loss + len(rows)
        dp_step(optimizer, params, grads)
        if step % config.eval_every and step < steps:
            continue
        row: dict[str, float] = {"step": step, "seconds": round(time.monotonic() - t0, 3),
                                 f"loss/{name}": loss_sum / max(n_loss, 1)}
        metric = task.valid_metric(model)
        if metric is not None:
            row[f"valid/{name}"] = row["valid_mean"] = metric
        history.append(row)
        loss_sum, n_loss = 0.0, 0
        logger.info("DP step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
    model.eval()
    record = PrivacyRecord(
        epsilon=spent_epsilon(dp.accountant, noise, q, steps, delta), delta=delta, target_epsilon=dp.epsilon,
        noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, accountant=dp.accountant, steps=steps,
        sample_rate=q, expected_batch_size=float(config.batch_size), users=n_users, examples=len(task),
        opacus_version=opacus.__version__, notes=_notes(name, dp, noise))
    final = {k.split("/", 1)[1]: v for k, v in history[-1].items() if k.startswith("valid/")} if history else {}
    return TrainResult(history=history, best_step=steps, best_metrics=final), record


def _notes(task: str, dp: DPConfig, noise: float) -> list[str]:
    notes = ["fixed number of steps, last weights: no early stopping, no time budget"]
    if task == "recommend":
        notes.append(f"loss: softmax over the target and {dp.negatives} uniformly sampled items per example")
    else:
        notes.append(f"loss: binary cross-entropy with fixed pos_weight {dp.pos_weight:g}")
    if noise == 0:
        notes.append("noise multiplier 0: NOT private (measurement only)")
    return notes


def dp_from_args(args: Any) -> DPConfig | None:
    """The DPConfig of ``textguide train``'s options (None without ``--dp-epsilon``); refuses, before any data is
    read, what private training cannot do (recipes, a time budget, checkpoints)."""
    epsilon, delta = args.dp_epsilon, args.dp_delta
    if epsilon is None:
        if delta is not None:
            raise ValueError("--dp-delta needs --dp-epsilon (the privacy budget); add --dp-epsilon E")
        return None
    if args.recipe not in ("amazon-scientific", "completejourney"):
        raise ValueError(f"--dp-epsilon trains the recipes amazon-scientific and completejourney (one at a time), "
                         f"not {args.recipe!r}: outfits use in-batch negatives, so one example's gradient cannot be "
                         "clipped alone")
    if args.max_seconds is not None:
        raise ValueError("--max-seconds cannot bound DP training: the accountant needs the number of steps fixed in "
                         "advance; drop --max-seconds and set --steps")
    if args.checkpoint_dir or args.resume:
        raise ValueError("DP training writes no checkpoints and cannot resume; drop --checkpoint-dir / --resume")
    max_grad_norm, accountant = args.dp_max_grad_norm, args.dp_accountant
    dp = DPConfig(epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant)  # type: ignore[arg-type]
    _require_opacus()
    return dp


def _require_opacus() -> Any:
    try:
        import opacus
    except ImportError as e:
        raise ValueError(f"DP training needs Opacus ({e}); install the privacy extra: pip install -e \".[privacy]\"") from e
    return opacus


def describe(record: PrivacyRecord | dict[str, Any]) -> str:
    """One line: the guarantee and how it was obtained."""
    r = record if isinstance(record, PrivacyRecord) else PrivacyRecord.from_dict(record)
    eps = f"{r.epsilon:.3g}" if math.isfinite(r.epsilon) else "inf (NOT private)"
    return (f"differential privacy: ({eps}, {r.delta:.3g})-DP per {r.unit.split(':')[0]} for {r.covers} "
            f"({r.accountant} accountant, noise multiplier {r.noise_multiplier:.4g}, clipping norm {r.max_grad_norm:g}, "
            f"{r.steps} steps at sample rate {r.sample_rate:.4g}, {r.users} users)")
