"""One behavioural contract, run on every task in textguide.tasks.TASKS (as implicit runs one test mixin over
every model): on a toy problem with a planted answer, a tiny trained adapter beats the task's text baseline on
its selection metric; save/load round-trips the adapter exactly; Guide serves the same ranking as the task's
own scorer; bad input is refused with a clear error. Adding a task: its module, and one line in TASK_NAMES."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.tasks import TASKS
from textguide.training import TrainConfig, train

TASK_NAMES = [
    "recommend",
    "outfit",
    "coupon",
]


def test_task_list_covers_the_registry() -> None:
    assert sorted(TASK_NAMES) == sorted(TASKS)
    for name, task in TASKS.items():
        assert task.name == name and task.select_metric


def _guide(name: str) -> Guide:
    toy = TASKS[name].toy(seed=0)
    items = toy.items
    meta = items.drop(columns=["text"]).assign(title=items["text"])
    return Guide.build(Catalog(items["id"].tolist(), items["text"].tolist(), meta.reset_index(drop=True)),
                       HashingEncoder(dim=32))


@lru_cache(maxsize=None)
def _trained(name: str):
    """(toy, training data, trained model) of a task; trained once per session."""
    task = TASKS[name]
    toy = task.toy(seed=0)
    data = task.toy_data(toy, _guide(name).index.embeddings)
    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=32, dim=16, seq_heads=2, tasks=(name,), n_slots=toy.n_slots))
    train(model, {name: data}, TrainConfig(steps=200, batch_size=32, lr=3e-3, eval_every=50, patience=None,
                                           show_progress=False))
    return toy, data, model


def _serving_guide(name: str) -> tuple[Guide, object, MultiTaskAdapter]:
    toy, data, model = _trained(name)
    guide = _guide(name)
    guide.set_adapter(model, dict(toy.meta))
    return guide, data, model


@pytest.mark.parametrize("name", TASK_NAMES)
def test_trained_adapter_beats_the_text_baseline(name: str) -> None:
    task = TASKS[name]
    _, data, model = _trained(name)
    trained, text = task.validate(data, model), task.validate(data, None)
    assert trained > text + 0.1, (task.select_metric, trained, text)
    assert data.valid_metric(model) == pytest.approx(trained)  # early stopping watches the same metric


@pytest.mark.parametrize("name", TASK_NAMES)
def test_save_load_round_trips_exactly(name: str, tmp_path: Path) -> None:
    task = TASKS[name]
    guide, data, model = _serving_guide(name)
    guide.save(tmp_path / "g")
    loaded = Guide.load(tmp_path / "g")
    before, after = model.state_dict(), loaded.adapter.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.adapter_meta.items() >= dict(task.toy(seed=0).meta).items()
    assert task.validate(data, loaded.adapter) == task.validate(data, model)
    for example in range(3):
        assert task.ask(loaded, data, example, 3) == task.ask(guide, data, example, 3)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_guide_serves_the_tasks_own_ranking(name: str) -> None:
    task = TASKS[name]
    guide, data, model = _serving_guide(name)
    for example in range(5):
        assert task.ask(guide, data, example, 3) == task.rank(data, example, model, 3), example


@pytest.mark.parametrize("name", TASK_NAMES)
def test_bad_input_is_refused(name: str) -> None:
    task = TASKS[name]
    toy, data, model = _trained(name)
    other = next(t for t in TASKS if t != name)
    with pytest.raises(ValueError, match=f"must be a {task.data_type.__name__}"):
        train(model, {name: _trained(other)[1]}, TrainConfig(steps=1, show_progress=False))
    wide = MultiTaskAdapter(AdapterConfig(input_dim=48, dim=16, seq_heads=2, tasks=(name,), n_slots=toy.n_slots))
    with pytest.raises(ValueError, match="wrong embedding dimension: expected 48, got 32"):
        task.check(wide, data)
    with pytest.raises(ValueError, match=f"no trained {name!r} adapter"):
        task.ask(_guide(name), data, 0, 3)  # method="adapter" on a guide without one
    bad = np.array(data.item_emb)
    bad[0] = np.nan
    with pytest.raises(ValueError, match="item_emb contains NaN"):
        task.toy_data(toy, bad)


def test_type_aware_outfit_head_with_kind_prior_is_served_as_ranked(tmp_path: Path) -> None:
    """The guide's complete_outfit reads each catalog item's slot from its slot field (type-aware head) and
    serves the kind prior inside the blend: it ranks exactly like the task's own scorer, before and after
    save / load."""
    import numpy as np

    from textguide.tasks.outfit import attach_kind_prior

    task = TASKS["outfit"]
    toy = task.toy(seed=0)
    guide = _guide("outfit")
    data = task.toy_data(toy, guide.index.embeddings)
    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=32, dim=16, seq_heads=2, tasks=("outfit",),
                                           n_slots=toy.n_slots, outfit_pair_rank=4))
    train(model, {"outfit": data}, TrainConfig(steps=60, batch_size=32, lr=3e-3, eval_every=30, patience=None,
                                               show_progress=False))
    rng = np.random.default_rng(0)
    kinds = rng.normal(size=(3, 32)).astype(np.float32)
    attach_kind_prior(model, kinds / np.linalg.norm(kinds, axis=1, keepdims=True),
                      rng.normal(size=(3, 3)).astype(np.float32))
    model.config.text_blend["outfit"] = 1.0
    assert np.abs(model.outfit.pair_up.detach().numpy()).max() > 0  # the slot-pair projections were trained
    guide.set_adapter(model, dict(toy.meta, methods={"outfit": "adapter"}))
    slots_seen = task.catalog_slots(guide)
    np.testing.assert_array_equal(slots_seen, data.item_slots)
    for example in range(5):
        assert task.ask(guide, data, example, 3) == task.rank(data, example, model, 3), example
    guide.save(tmp_path / "g")
    loaded = Guide.load(tmp_path / "g")
    assert loaded.adapter.config.outfit_kinds == 3 and loaded.adapter.config.outfit_pair_rank == 4
    for example in range(5):
        assert task.ask(loaded, data, example, 3) == task.rank(data, example, model, 3), example
