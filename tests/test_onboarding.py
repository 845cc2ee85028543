"""Cold-start onboarding: new products are served at once by every query, atomically, idempotently, and
a failed or killed onboarding leaves the guide as it was (in memory and on disk)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import textguide.guide as guide_module
from textguide import cli
from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.guide import Guide
from textguide.tasks.recommend import recommend_queries

ROOT = Path(__file__).resolve().parents[1]

#: A new category (no interactions, never seen in training): six garden products.
GARDEN = [
    {"id": "g01", "title": "Garden hose 20 m", "brand": "Verde", "description": "Kink-free rubber hose"},
    {"id": "g02", "title": "Terracotta plant pot", "brand": "Verde", "description": "Drainage hole, 30 cm"},
    {"id": "g03", "title": "Pruning shears", "brand": "Forge", "description": "Steel blades for roses"},
    {"id": "g04", "title": "Galvanised watering can", "brand": "Verde", "description": "10 litre garden can"},
    {"id": "g05", "title": "Leather garden gloves", "brand": "Pemberton", "description": "Thorn-proof"},
    {"id": "g06", "title": "Wooden bird feeder", "brand": "Lumen", "description": "Hangs from a garden tree"},
]
GARDEN_IDS = [p["id"] for p in GARDEN]


def _garden(extra: list[dict] | None = None) -> Catalog:
    return Catalog.from_records([dict(p) for p in GARDEN] + (extra or []))


def _many_garden(n: int, start: int = 100) -> list[dict]:
    """``n`` synthetic garden products sharing words (so they compete in the same searches)."""
    nouns = ["hose", "rake", "spade", "planter", "trowel", "sprinkler", "lantern", "bench"]
    adjs = ["steel", "wooden", "copper", "green", "folding", "solar"]
    return [{"id": f"g{start + i}", "title": f"{adjs[i % len(adjs)]} garden {nouns[i % len(nouns)]} {i}",
             "description": "for the garden"} for i in range(n)]


@pytest.fixture
def path(catalog: Catalog, enc: HashingEncoder, tmp_path: Path) -> Path:
    """A saved guide directory of the 20-product catalog."""
    return Guide.build(catalog, enc).save(tmp_path / "guide")


@pytest.fixture
def guide(path: Path, enc: HashingEncoder) -> Guide:
    return Guide.load(path, encoder=enc)


def _adapter(enc: HashingEncoder) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_layers=1, seq_heads=2, max_history=8,
                                          n_slots=5, dropout=0.0))


SLOTS = ["Kitchen", "Tops", "Shoes", "Bags", "Decor"]


@pytest.fixture
def adapted(guide: Guide, enc: HashingEncoder) -> Guide:
    """The saved guide with an (untrained) multi-task adapter and one coupon, saved again."""
    guide.set_adapter(_adapter(enc), {"slot_field": "category", "slots": SLOTS})
    guide.add_coupons({"c-kitchen": ["p01", "p02", "p03"]}, save=False)
    guide.save(guide.path)
    return guide


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a guide directory (and its siblings' names: no temp dirs left behind)."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    siblings = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-"))
    return {"__siblings__": repr(siblings).encode(), **files}


def _state(g: Guide) -> tuple:
    return (g.index.live_ids(), g.index.count, g.index.embeddings.copy(), dict(g.manifest), dict(g.coupons))


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2]) and a[3] == b[3] and a[4] == b[4]


# ---------------------------------------------------------------------------------------------------------
# served at once
# ---------------------------------------------------------------------------------------------------------


def test_onboarded_items_are_searchable_at_once(guide: Guide, catalog: Catalog, enc: HashingEncoder) -> None:
    report = guide.onboard(_garden(), category="Garden")
    assert (report.added, report.replaced, report.unchanged, report.items) == (6, 0, 0, 26)
    assert guide.info()["categories"]["Garden"] == 6

    # search equals brute force over old + new texts
    texts = catalog.texts + [guide.index.item(i)["text"] for i in GARDEN_IDS]
    ids = catalog.ids + GARDEN_IDS
    q = enc.encode(["garden hose"])[0]
    expected = [ids[r] for r in np.argsort(-(enc.encode(texts) @ q), kind="stable")[:5]]
    assert guide.search("garden hose", k=5).ids == expected
    assert expected[0] == "g01"

    hits = guide.search("steel", k=10, category="Garden")
    assert len(hits) == 6 and set(hits.ids) == set(GARDEN_IDS)
    assert all(item["category"] == "Garden" for item in hits.items)
    sim = guide.similar("g04", k=3, category="Garden")
    assert "g04" not in sim.ids and set(sim.ids) <= set(GARDEN_IDS) and len(sim) == 3
    assert set(guide.similar("g03", k=2, category="Kitchen").ids) <= set(catalog.ids)  # new -> old works too
    assert guide.similar(["g01", "p01"], k=2)[1].ids == guide.similar("p01", k=2).ids

    back = Guide.load(guide.path, encoder=enc)  # and it is on disk
    assert back.search("garden hose", k=5).ids == expected
    assert back.similar("g04", k=3, category="Garden").ids == sim.ids


def test_recommend_serves_onboarded_items(adapted: Guide, enc: HashingEncoder) -> None:
    before = adapted.recommend(["p01", "p05"], k=3)  # builds the adapted item vectors of the old catalog
    assert before.method == "adapter"
    adapted.onboard(_garden(), category="Garden")

    # a history holding an onboarded item: served by text similarity until observe() shows the adapter helps
    assert adapted.recommend(["g01", "p05"], k=24).method == "text"
    hits = adapted.recommend(["g01", "p05"], k=24, method="adapter")
    assert hits.method == "adapter"
    assert set(GARDEN_IDS[1:]) <= set(hits.ids) and "g01" not in hits.ids and "p05" not in hits.ids

    # equal to the adapter computed by hand over the new catalog: no stale adapted vectors
    idx = adapted.index
    q = recommend_queries(adapted.adapter, idx.embeddings, [[idx.row_of["g01"], idx.row_of["p05"]]])[0]
    live = np.flatnonzero(~idx.deleted)
    scores = encode_items(adapted.adapter, idx.embeddings[live], "recommend") @ q
    order = [idx.ids[live[r]] for r in np.argsort(-scores, kind="stable")]
    assert hits.ids == [i for i in order if i not in ("g01", "p05")][:24]

    only = adapted.recommend(["p09"], k=4, category="Garden")
    assert len(only) == 4 and set(only.ids) <= set(GARDEN_IDS)
    text = adapted.recommend(["g02"], k=3, method="text", category="Garden")
    assert text.method == "text" and set(text.ids) <= set(GARDEN_IDS) - {"g02"}

    back = Guide.load(adapted.path, encoder=enc)  # the adapter travels with the onboarded guide
    assert back.recommend(["g01", "p05"], k=24, method="adapter").ids == hits.ids


def test_adapted_item_vectors_are_cached_per_index_object(adapted: Guide, enc: HashingEncoder) -> None:
    first = adapted.task_vectors("recommend")
    assert adapted.task_vectors("recommend") is first  # cached while the index is the same
    new = adapted.index.copy()
    new.add(enc.encode(["Copper garden sprinkler"]), ["z1"], pd.DataFrame({"title": ["Copper garden sprinkler"]}))
    adapted.index = new  # a swap whose cache reset a racing reader undid: the cache must not serve the old index
    again = adapted.task_vectors("recommend")
    assert again is not first and "z1" in again and "z1" not in first
    assert adapted.recommend(["p01"], k=50, method="adapter").ids.count("z1") == 1


def test_complete_outfit_ranks_onboarded_candidates(adapted: Guide) -> None:
    adapted.onboard(_garden(), category="Garden")
    cands = ["g02", "g03", "g05", "p13"]
    assert adapted.complete_outfit(["p05", "g01"], k=3, candidates=cands).method == "text"  # candidates' slots
    hits = adapted.complete_outfit(["p05", "g01"], k=3, candidates=cands, method="adapter")
    assert hits.method == "adapter" and len(hits) == 3 and set(hits.ids) <= set(cands)
    assert np.all(np.diff(hits.scores) <= 0)
    # the whole catalog, unknown slot: onboarded items are candidates like any other
    every = adapted.complete_outfit(["g01"], k=25)
    assert set(GARDEN_IDS[1:]) <= set(every.ids) and "g01" not in every.ids
    # a new category is not a slot of the trained adapter: its "unknown slot" query, searched within the category
    text = adapted.complete_outfit(["p05"], k=3, slot="Garden", method="text")
    assert set(text.ids) <= set(GARDEN_IDS)
    assert adapted.complete_outfit(["p05"], k=6, slot="Garden").method == "text"  # onboarded: not yet evidenced
    new_slot = adapted.complete_outfit(["p05"], k=6, slot="Garden", method="adapter")
    assert new_slot.method == "adapter" and sorted(new_slot.ids) == sorted(GARDEN_IDS)
    assert new_slot.ids == adapted.complete_outfit(["p05"], k=6, candidates=GARDEN_IDS, method="adapter").ids
    with pytest.raises(ValueError, match="unknown slot 'Pond': not a slot of the adapter .* and no item has category='Pond'"):
        adapted.complete_outfit(["p05"], k=3, slot="Pond")


def test_rank_coupons_over_onboarded_products(adapted: Guide, enc: HashingEncoder) -> None:
    adapted.onboard(_garden(), category="Garden")
    mapping = {"c-garden": ["g01", "g04"], "c-kitchen-new": ["p01", "p04"]}
    for method in ("adapter", "text"):
        hits = adapted.rank_coupons(["g02", "g03"], mapping, method=method)
        assert hits.method == method and set(hits.ids) == set(mapping)
        assert np.all((hits.scores >= 0) & (hits.scores <= 1))
    assert adapted.rank_coupons(["g02", "g05"], mapping, method="text").ids[0] == "c-garden"

    adapted.add_coupons({"c-garden": ["g01", "g04"]})  # registered (and saved) without retraining
    back = Guide.load(adapted.path, encoder=enc)
    assert back.coupons["c-garden"] == ["g01", "g04"]
    ranked = back.rank_coupons(["g02"], ["c-garden", "c-kitchen"])
    assert set(ranked.ids) == {"c-garden", "c-kitchen"}


def test_onboard_a_catalog_file_with_the_category_column(guide: Guide, tmp_path: Path) -> None:
    csv = tmp_path / "garden.csv"
    pd.DataFrame([dict(p, category="Garden") for p in GARDEN]).to_csv(csv, index=False)
    report = guide.onboard(csv)
    assert report.added == 6
    assert set(guide.search("hose", k=6, category="Garden").ids) == set(GARDEN_IDS)


def test_onboard_in_memory_guide_without_directory(catalog: Catalog, enc: HashingEncoder) -> None:
    g = Guide.build(catalog, enc)
    assert g.onboard(_garden(), category="Garden").added == 6
    assert g.path is None and g.search("garden hose", k=1).ids == ["g01"]


# ---------------------------------------------------------------------------------------------------------
# atomic under use
# ---------------------------------------------------------------------------------------------------------


QUERIES = [
    lambda g: tuple(g.search("steel garden hose", k=5).ids),
    lambda g: tuple(g.similar("p10", k=5).ids),
    lambda g: tuple(g.similar("p13", k=3, category="Garden").ids),
    lambda g: tuple(g.recommend(["p09", "p12"], k=4, method="text").ids),
]


def test_reader_thread_sees_old_or_new_state_never_a_mix(catalog: Catalog, enc: HashingEncoder, guide: Guide) -> None:
    """Each answer a reader gets while the main thread onboards (5 times) is the answer of one whole state,
    and states only move forward."""
    batches = [_garden()] + [Catalog.from_records(_many_garden(10, start=100 + 10 * b)) for b in range(4)]
    # the answers of every state S0..S5, computed on a twin guide kept in memory
    twin = Guide.build(catalog, enc)
    expected = [[q(twin) for q in QUERIES]]
    for b in batches:
        twin.onboard(b, category="Garden", save=False)
        expected.append([q(twin) for q in QUERIES])
    last = len(expected) - 1
    assert len({e[0] for e in expected}) == len(expected)  # the search tells every state apart
    assert all(len({e[j] for e in expected}) > 1 for j in range(len(QUERIES)))

    errors: list[BaseException] = []
    calls: list[set[int]] = []
    done = threading.Event()

    def reader() -> None:
        floor = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for j, query in enumerate(QUERIES):
                try:
                    answer = query(guide)
                except BaseException as e:  # noqa: BLE001 - any exception is a failure
                    errors.append(e)
                    return
                states = {s for s, e in enumerate(expected) if e[j] == answer}
                if not states or max(states) < floor:
                    errors.append(AssertionError(f"query {j}: {answer} is the answer of no state >= S{floor}"))
                    return
                floor = max(floor, min(states))
                calls.append(states)
                if done.is_set() and states == {last}:
                    return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for b in batches:
            guide.onboard(b, category="Garden")
            time.sleep(0.005)
    finally:
        done.set()
        thread.join(timeout=90)
    assert not errors, errors[0]
    assert 0 in calls[0] and calls[-1] == {last}
    assert len(calls) > 2 * len(batches)
    assert [q(Guide.load(guide.path, encoder=enc)) for q in QUERIES] == expected[-1]


def test_failed_write_is_never_visible_to_readers(guide: Guide, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the new state is being written, readers keep the old one; a write that fails never shows."""
    before, files = _state(guide), _snapshot(path)
    writing = threading.Event()

    def failing_write(dst, write):
        writing.set()
        time.sleep(0.3)
        raise OSError("disk full")

    monkeypatch.setattr(guide_module, "write_artifact", failing_write)
    leaked: list[list[str]] = []
    stop = threading.Event()

    def reader() -> None:
        writing.wait(10)
        while not stop.is_set():
            new = [i for i in guide.search("garden hose", k=3).ids if i in GARDEN_IDS]
            if new:
                leaked.append(new)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with pytest.raises(OSError, match="disk full"):
            guide.onboard(_garden(), category="Garden")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert leaked == []
    assert _same_state(_state(guide), before) and _snapshot(path) == files


SLOW_ONBOARD = textwrap.dedent(
    """
    import sys, time
    from textguide.catalog import Catalog
    from textguide.encoder import HashingEncoder
    from textguide.guide import Guide
    from textguide.index import ItemIndex

    where = sys.argv[2]

    class SlowEncoder(HashingEncoder):
        def encode(self, texts, batch_size=64, show_progress=None):
            if where == "encode":
                print("encoding", flush=True)
                time.sleep(60)
            return super().encode(texts, batch_size, show_progress)

    if where == "write":
        plain_write = ItemIndex.write
        def slow_write(self, directory):
            section = plain_write(self, directory)  # the new index files are in the temp dir ...
            print(directory, flush=True)             # ... then sleep before the manifest and the swap
            time.sleep(60)
            return section
        ItemIndex.write = slow_write

    guide = Guide.load(sys.argv[1], encoder=SlowEncoder(32))
    records = [{"id": f"k{i}", "title": f"killed garden product {i}"} for i in range(50)]
    guide.onboard(Catalog.from_records(records), category="Garden")
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("where", ["encode", "write"])
def test_kill_mid_onboarding_keeps_the_old_guide(path: Path, guide: Guide, enc: HashingEncoder, where: str) -> None:
    files = _snapshot(path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", SLOW_ONBOARD, str(path), where], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    watchdog = threading.Timer(120, child.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        line = child.stdout.readline().strip()
        if not line:
            child.wait(timeout=30)
            pytest.fail(f"child died before onboarding: {child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        watchdog.cancel()
        child.kill()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    if where == "write":  # killed with the new version half written in a temp sibling
        assert Path(line).is_dir() and not (Path(line) / "manifest.json").exists()

    old = Guide.load(path, encoder=enc)  # verifies every checksum
    assert old.index.count == 20 and "k0" not in old.index
    assert {k: v for k, v in _snapshot(path).items() if k != "__siblings__"} == \
        {k: v for k, v in files.items() if k != "__siblings__"}
    # the next onboarding is not blocked (the dead writer's lock went with it) and cleans up after it
    assert guide.onboard(_garden(), category="Garden").added == 6
    assert _snapshot(path)["__siblings__"] == b"[]"
    assert Guide.load(path, encoder=enc).index.count == 26


class FailingEncoder(HashingEncoder):
    def encode(self, texts, batch_size=64, show_progress=None):
        raise RuntimeError("encoder crashed")


def _bad_file(tmp_path: Path, kind: str) -> Path:
    frame = pd.DataFrame(GARDEN)
    if kind == "no-title":
        frame = frame.drop(columns="title")
    else:
        frame.loc[1, "id"] = "g01"
    out = tmp_path / f"{kind}.csv"
    frame.to_csv(out, index=False)
    return out


@pytest.mark.parametrize("case, error, match", [
    ("no-title", ValueError, "missing required column 'title'"),
    ("duplicate-ids-file", ValueError, "duplicate ids"),
    ("duplicate-ids-catalog", ValueError, "duplicate ids"),
    ("encoder-crash", RuntimeError, "encoder crashed"),
    ("clash", ValueError, "already in the guide with a different text"),
    ("bad-category", ValueError, "category must be a non-empty string"),
])
def test_failed_onboarding_leaves_the_guide_unchanged(path: Path, tmp_path: Path, case: str, error, match) -> None:
    g = Guide.load(path, encoder=FailingEncoder(32) if case == "encoder-crash" else HashingEncoder(32))
    before, files = _state(g), _snapshot(path)
    kwargs: dict = {"category": "Garden"}
    if case == "no-title":
        source = _bad_file(tmp_path, "no-title")
    elif case == "duplicate-ids-file":
        source = _bad_file(tmp_path, "dups")
    elif case == "duplicate-ids-catalog":  # a Catalog built by hand skips the loader's checks
        cat = _garden()
        source = Catalog(ids=cat.ids + ["g01"], texts=cat.texts + ["another hose"],
                         metadata=pd.concat([cat.metadata, cat.metadata.iloc[:1]], ignore_index=True))
    elif case == "clash":
        source = Catalog.from_records([{"id": "p01", "title": "A different skillet"}, *GARDEN])
    elif case == "bad-category":
        source, kwargs = _garden(), {"category": " "}
    else:
        source = _garden()
    with pytest.raises(error, match=match):
        g.onboard(source, **kwargs)
    assert _same_state(_state(g), before)
    assert _snapshot(path) == files


# ---------------------------------------------------------------------------------------------------------
# idempotence, clashes, replace, refresh
# ---------------------------------------------------------------------------------------------------------


def test_reonboarding_is_idempotent(guide: Guide, path: Path, counting) -> None:
    guide.onboard(_garden(), category="Garden")
    state, files = _state(guide), _snapshot(path)
    report = guide.onboard(_garden(), category="Garden")
    assert (report.added, report.replaced, report.unchanged, report.items) == (0, 0, 6, 26)
    assert _same_state(_state(guide), state) and _snapshot(path) == files  # nothing rewritten

    counter = counting(HashingEncoder(32))
    g = Guide.load(path, encoder=counter)
    report = g.onboard(_garden(_many_garden(2)), category="Garden")  # overlapping: only the new two are embedded
    assert (report.added, report.unchanged, report.items) == (2, 6, 28)
    assert len(counter.seen) == 2


def test_clash_is_an_error_unless_replace(guide: Guide, enc: HashingEncoder) -> None:
    guide.onboard(_garden(), category="Garden")
    changed = [dict(GARDEN[0], title="Solar fountain pump", description="Floating pond pump")]
    with pytest.raises(ValueError, match=r"1 ids already in the guide with a different text, first \['g01'\].*replace=True"):
        guide.onboard(Catalog.from_records(changed), category="Garden")
    assert guide.index.item("g01")["title"] == "Garden hose 20 m"

    report = guide.onboard(Catalog.from_records(changed), category="Garden", replace=True)
    assert (report.added, report.replaced, report.items) == (0, 1, 26)
    for g in (guide, Guide.load(guide.path, encoder=enc)):
        assert g.search("solar fountain pump", k=1).ids == ["g01"]
        assert g.index.item("g01")["title"] == "Solar fountain pump"
        live_texts = g.index.metadata.loc[~g.index.deleted, "text"].tolist()
        assert not any("Garden hose" in t for t in live_texts)  # the old text is gone
        assert g.index.live_ids().count("g01") == 1
        assert g.similar("g01", k=3).ids  # the replaced item still works as a query


def test_onboard_batch_size_and_precision_options(guide: Guide, enc: HashingEncoder, counting, path: Path) -> None:
    before = _snapshot(path)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        guide.onboard(_garden(), batch_size=0)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp8'"):
        guide.onboard(_garden(), precision="fp8")
    with pytest.raises(ValueError, match="precision='bf16' needs a sentence-transformers encoder; .*leave precision unset"):
        guide.onboard(_garden(), precision="bf16")
    assert _snapshot(path) == before and guide.index.count == 20  # nothing changed

    class Spy(type(counting(enc))):
        batch_sizes: list[int] = []

        def encode(self, texts, batch_size=64, show_progress=None):
            self.batch_sizes.append(batch_size)
            return super().encode(texts, batch_size=batch_size, show_progress=show_progress)

    spy = Spy(enc)
    g = Guide.load(path, encoder=spy)
    report = g.onboard(_garden(), category="Garden", batch_size=3, precision="fp32")  # fp32 = the guide's own
    assert spy.batch_sizes == [3] and report.added == 6 and report.precision == "fp32"


def test_onboard_low_priority_embeds_in_a_niced_worker_thread(guide: Guide, path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    calls = []
    monkeypatch.setattr(os, "setpriority", lambda which, who, prio: calls.append((which, who, prio)))
    main = threading.get_native_id()
    report = guide.onboard(_garden(), category="Garden", low_priority=True)
    assert report.added == 6 and guide.search("garden hose", k=1, category="Garden").ids == ["g01"]
    assert len(calls) == 1 and calls[0][0] == os.PRIO_PROCESS and calls[0][2] == 19
    assert calls[0][1] != main  # a worker thread's id: the caller's priority is untouched

    class Broken(type(guide.encoder)):
        def encode(self, texts, batch_size=64, show_progress=None):
            raise RuntimeError("encoder crashed in the worker")

    before = _snapshot(path)
    g = Guide.load(path, encoder=Broken(guide.encoder.dim))
    with pytest.raises(RuntimeError, match="encoder crashed in the worker"):
        g.onboard(Catalog.from_records(_many_garden(3)), low_priority=True)
    assert _snapshot(path) == before and g.index.count == 26


def test_refresh_in_another_instance_picks_up_the_new_state(path: Path, guide: Guide, enc: HashingEncoder) -> None:
    other = Guide.load(path, encoder=enc)
    assert other.refresh() is False
    guide.onboard(_garden(), category="Garden")
    assert "g01" not in other.index
    assert other.refresh() is True
    assert other.search("garden hose", k=1).ids == ["g01"] and other.index.count == 26
    assert other.refresh() is False


def test_refresh_reads_again_when_a_writer_swaps_mid_load(path: Path, guide: Guide, enc: HashingEncoder,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A version swapped in between load's checksum pass and its reads makes the parts disagree: read again."""
    other = Guide.load(path, encoder=enc)
    guide.onboard(_garden(), category="Garden")
    real = Guide.load.__func__
    calls: list[Path] = []

    def flaky(cls, where, encoder=None, *, verify=True):
        calls.append(where)
        if len(calls) == 1:
            raise ValueError(f"{where}: index parts disagree: 26 FAISS vectors, 20 embeddings")
        return real(cls, where, encoder, verify=verify)

    monkeypatch.setattr(Guide, "load", classmethod(flaky))
    assert other.refresh() is True and len(calls) == 2
    assert "g01" in other.index


def test_a_stale_instance_cannot_overwrite_anothers_onboarding(path: Path, guide: Guide, enc: HashingEncoder) -> None:
    other = Guide.load(path, encoder=enc)
    guide.onboard(_garden(), category="Garden")
    more = Catalog.from_records(_many_garden(3))
    with pytest.raises(ValueError, match="changed by another writer.*refresh"):
        other.onboard(more, category="Garden")  # would silently drop the garden items
    assert other.refresh()
    assert other.onboard(more, category="Garden").added == 3
    back = Guide.load(path, encoder=enc)
    assert back.index.count == 29 and "g01" in back.index and "g100" in back.index


# ---------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------


def test_cli_onboard(catalog_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "g"
    assert cli.main(["build-index", str(catalog_csv), str(out), "--encoder", "hashing:32", "--no-cache"]) == 0
    new = tmp_path / "garden.csv"
    pd.DataFrame(GARDEN).to_csv(new, index=False)
    capsys.readouterr()

    niced = []
    monkeypatch.setattr(os, "nice", lambda n: niced.append(n))  # the CLI lowers its priority first (default 19)
    assert cli.main(["onboard", str(out), str(new), "--category", "Garden", "--precision", "bf16"]) == 2
    assert "needs a sentence-transformers encoder" in capsys.readouterr().err  # hashing: no bf16 twin
    assert cli.main(["onboard", str(out), str(new), "--category", "Garden", "--batch-size", "2"]) == 0
    assert "6 added, 0 replaced, 0 unchanged; 26 items now" in capsys.readouterr().out
    assert niced == [19, 19]
    assert cli.main(["onboard", str(out), str(new), "--category", "Garden", "--nice", "0"]) == 0
    assert niced == [19, 19]  # --nice 0 keeps the priority
    assert cli.main(["onboard", str(out), str(new), "--category", "Garden", "--no-cache"]) == 0
    assert "0 added, 0 replaced, 6 unchanged" in capsys.readouterr().out

    assert cli.main(["search", str(out), "garden hose", "-k", "1", "--category", "Garden", "--json"]) == 0
    assert '"ids": ["g01"]' in capsys.readouterr().out

    changed = tmp_path / "changed.csv"
    pd.DataFrame([dict(GARDEN[0], title="Solar fountain pump")]).to_csv(changed, index=False)
    assert cli.main(["onboard", str(out), str(changed), "--category", "Garden"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert cli.main(["onboard", str(out), str(changed), "--category", "Garden", "--replace"]) == 0
    assert "0 added, 1 replaced" in capsys.readouterr().out
    g = Guide.load(out)
    assert g.index.count == 26 and g.index.item("g01")["title"] == "Solar fountain pump"

    bad = _bad_file(tmp_path, "no-title")
    assert cli.main(["onboard", str(out), str(bad)]) == 2
    assert "missing required column 'title'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# the optional few-shot step: fine-tune on a new category's first interactions, guarded
# ---------------------------------------------------------------------------------------------------------


def _recommend_only(enc: HashingEncoder) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_layers=1, seq_heads=2, max_history=8,
                                          dropout=0.0, tasks=("recommend",)))




def _few_shot_config(**kw):
    from textguide.training import TrainConfig
    from textguide.transfer import TransferConfig

    train = TrainConfig(steps=300, batch_size=64, lr=1e-2, eval_every=25, patience=100, show_progress=False)
    return TransferConfig(**{"candidates": ("model:finetune",), "train": train, **kw})


@pytest.fixture
def garden_guide(path: Path, enc: HashingEncoder) -> tuple[Guide, list[str], dict[str, str]]:
    """The saved guide with a recommend-only adapter and 40 onboarded garden products; a hidden rule: whoever
    buys item a next buys succ[a] (a fixed random pairing among the garden products)."""
    guide = Guide.load(path, encoder=enc)
    guide.set_adapter(_recommend_only(enc))
    guide.save(path)
    guide.onboard(Catalog.from_records(_many_garden(40)), category="Garden")
    ids = [f"g{100 + i}" for i in range(40)]
    perm = np.random.default_rng(3).permutation(40)
    return guide, ids, {ids[i]: ids[perm[i]] for i in range(40) if perm[i] != i}


def test_fine_tune_learns_a_new_categorys_first_interactions(garden_guide) -> None:
    guide, ids, succ = garden_guide
    rng = np.random.default_rng(0)
    firsts = [a for a in ids if a in succ]
    sequences = [[a, succ[a]] for a in rng.choice(firsts, 300)]
    def hit_rate(g: Guide) -> float:
        return float(np.mean([g.recommend([a], k=1, category="Garden", method="adapter").ids[0] == succ[a]
                              for a in firsts]))
    before = hit_rate(guide)
    old = guide.adapter
    report = guide.fine_tune(sequences, config=_few_shot_config())
    assert report["chosen"] == "model:finetune" and guide.adapter is not old
    cur, new = report["methods"]["current"]["valid"]["Recall@10"], report["methods"]["model:finetune"]["valid"]["Recall@10"]
    assert new > cur and report["methods"]["model:finetune"]["gain_vs_current"]["Recall@10"] == pytest.approx((new - cur) / cur)
    assert report["sequences"] == {"train": 240, "valid": 60}
    after = hit_rate(guide)
    assert before < 0.2 and after > 0.8  # the rule is learned from the interactions alone
    # written atomically with the guide: a fresh load serves the fine-tuned adapter, the report is beside it
    back = Guide.load(guide.path, encoder=guide.encoder)
    assert hit_rate(back) == after and back.adapter_meta["fine_tuned"]["method"] == "model:finetune"
    assert json.loads((guide.path / "reports" / "fine_tune.json").read_text())["chosen"] == "model:finetune"


def test_fine_tune_keeps_the_adapter_when_no_candidate_beats_it(garden_guide) -> None:
    guide, ids, succ = garden_guide
    before = _snapshot(guide.path)
    old = guide.adapter
    sequences = [[a, succ[a]] for a in ids if a in succ] * 3
    report = guide.fine_tune(sequences, config=_few_shot_config(min_gain=100.0))  # demands +10,000 %
    assert report["chosen"] == "current" and guide.adapter is old
    assert "model:finetune" in report["refused"] and "needs > +10000.0%" in report["refused"]["model:finetune"]
    assert report["summary"].startswith("kept current")
    after = _snapshot(guide.path)
    assert {k: v for k, v in after.items() if k != "reports/fine_tune.json"} == before  # only the report is new


def test_fine_tune_of_a_multitask_adapter_leaves_the_shared_part_alone(adapted: Guide) -> None:
    adapted.onboard(_garden(), category="Garden")
    sequences = [["g01", "g02", "g03"], ["g02", "g04"], ["g05", "g06", "g01"], ["p01", "g03"]] * 10
    shared_before = {n: p.detach().clone() for n, p in adapted.adapter.named_parameters() if n.startswith("item_adapter.")}
    report = adapted.fine_tune(sequences, config=_few_shot_config(candidates=("model:finetune", "model:l2sp")))
    assert set(report["methods"]) == {"current", "model:freeze-shared"}
    assert "only model:freeze-shared ran" in report["note"]
    tuned = adapted.adapter
    for n, p in tuned.named_parameters():
        if n in shared_before:
            assert torch.equal(p, shared_before[n])  # outfit and coupon heads read an unchanged item adapter


def test_fine_tune_errors(garden_guide, catalog: Catalog, enc: HashingEncoder) -> None:
    g, ids, _ = garden_guide
    with pytest.raises(KeyError, match=r"1 item ids in sequences are not in the guide, first \['nope'\]; onboard"):
        g.fine_tune([[ids[0], "nope"], ids[1:3]])
    with pytest.raises(ValueError, match="sequences must be a non-empty list"):
        g.fine_tune("g100")
    with pytest.raises(ValueError, match="sequence 1 must be a list of item ids"):
        g.fine_tune([ids[:2], "g101"])
    with pytest.raises(ValueError, match="need at least 2 sequences of >= 2 distinct items"):
        g.fine_tune([ids[:2], [ids[3], ids[3]]])
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\)"):
        g.fine_tune([ids[:2], ids[2:4]], valid_fraction=1.0)
    with pytest.raises(ValueError, match="model-based candidates only"):
        g.fine_tune([ids[:2], ids[2:4]], config=_few_shot_config(candidates=("feature:mmd",)))
    with pytest.raises(ValueError, match="no trained 'recommend' adapter"):
        Guide.build(catalog, enc).fine_tune([["p01", "p02"], ["p03", "p04"]])
