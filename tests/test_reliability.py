"""Lose nothing, trust nothing: directories that are not guides, torn reads, hostile manifests and inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from textguide.catalog import Catalog
from textguide.cli import main
from textguide.encoder import HashingEncoder
from textguide.guide import Guide, build_index
from textguide import storage
from textguide.storage import ArtifactError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# 1. build-index never deletes a directory that is not a guide
# ---------------------------------------------------------------------------------------------------------


def _documents(tmp_path: Path) -> Path:
    docs = tmp_path / "documents"
    (docs / "sub").mkdir(parents=True)
    (docs / "thesis.txt").write_text("five years of work", encoding="utf-8")
    (docs / "sub" / "notes.md").write_text("notes", encoding="utf-8")
    return docs


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_build_index_refuses_a_directory_that_is_not_a_guide(catalog_csv: Path, tmp_path: Path) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    with pytest.raises(ValueError, match=r"documents.*not a textguide guide.*--force"):
        build_index(catalog_csv, docs, encoder="hashing:32", use_cache=False)
    assert _tree(docs) == before


def test_build_index_into_the_catalogs_own_directory_keeps_the_catalog(catalog_csv: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    before = catalog_csv.read_bytes()
    rc = main(["build-index", str(catalog_csv), str(catalog_csv.parent), "--encoder", "hashing:32", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a textguide guide" in err and "--force" in err and "Traceback" not in err
    assert catalog_csv.read_bytes() == before


def test_build_index_force_keeps_the_old_contents_aside(catalog_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    rc = main(["build-index", str(catalog_csv), str(docs), "--encoder", "hashing:32", "--no-cache", "--force"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert Guide.load(docs).index.count == 20
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("documents.replaced-")]
    assert len(kept) == 1 and _tree(kept[0]) == before  # nothing deleted: moved aside, and said where
    assert str(kept[0]) in caplog.text and "thesis.txt" in caplog.text  # the CLI prints warnings on stderr


def test_build_index_replaces_a_guide_or_an_empty_directory(catalog_csv: Path, tmp_path: Path, products) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    build_index(catalog_csv, empty, encoder="hashing:32", use_cache=False)
    assert Guide.load(empty).index.count == 20
    small = tmp_path / "small.csv"
    small.write_text("id,title\na,Red mug\nb,Blue scarf\n", encoding="utf-8")
    build_index(small, empty, encoder="hashing:32", use_cache=False)  # a guide: replaced without --force
    assert Guide.load(empty).index.live_ids() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name] == []


def test_build_index_refuses_a_file(catalog_csv: Path, tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="is a file"):
        build_index(catalog_csv, target, encoder="hashing:32", use_cache=False, force=True)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_save_refuses_a_directory_that_is_not_a_guide(guide: Guide, tmp_path: Path) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    with pytest.raises(ValueError, match="not a textguide guide"):
        guide.save(docs)
    assert _tree(docs) == before


# ---------------------------------------------------------------------------------------------------------
# 2. torn reads and concurrent writers: old or new, never a mix
# ---------------------------------------------------------------------------------------------------------


def _other_catalog(products: list[dict], n: int) -> Catalog:
    return Catalog.from_records([dict(p, id="n" + p["id"], title=p["title"] + " deluxe") for p in products[:n]])


def _assert_whole(g: Guide, enc: HashingEncoder) -> None:
    """The loaded guide is one version: its manifest describes exactly the data it holds."""
    m = g.manifest
    assert m["index"]["rows"] == len(g.index.ids) == len(g.index.embeddings) == g.index.faiss_index.ntotal
    assert m["counts"]["items"] == g.index.count
    texts = g.index.metadata["text"].tolist()
    np.testing.assert_allclose(g.index.embeddings, enc.encode(texts), atol=1e-6)  # rows belong to their items


def test_load_never_mixes_versions_when_a_writer_swaps_after_verification(saved: Path, products, enc,
                                                                          tmp_path: Path, monkeypatch) -> None:
    """A writer swaps a new version in right after load has checksummed the old one (the window the probe hit)."""
    from textguide import storage

    v2 = Guide.build(_other_catalog(products, 7), enc).save(tmp_path / "v2")
    n_files = len(json.loads((saved / "manifest.json").read_text(encoding="utf-8"))["files"])
    real = hashlib.sha256
    state = {"digests": 0}

    class SwapAfterLastDigest:
        def __init__(self, *args):
            self._h = real(*args)

        def update(self, data):
            self._h.update(data)

        def hexdigest(self):
            out = self._h.hexdigest()
            state["digests"] += 1
            if state["digests"] == n_files:  # every listed file checked: now a writer publishes v2
                assert storage._exchange(v2, saved)
                shutil.rmtree(v2)  # and deletes the old version, as atomic_directory does
            return out

    monkeypatch.setattr(hashlib, "sha256", SwapAfterLastDigest)
    g = Guide.load(saved, encoder=enc)
    monkeypatch.undo()
    assert state["digests"] >= n_files
    _assert_whole(g, enc)
    assert g.index.count in (20, 7)


def test_load_reads_again_when_the_version_it_opened_is_deleted(saved: Path, products, enc, tmp_path: Path,
                                                                monkeypatch) -> None:
    """A version deleted under the reader (files gone mid-read) is read again from the new one."""
    from textguide import storage

    v2 = Guide.build(_other_catalog(products, 7), enc).save(tmp_path / "v2")
    real = storage._read_at
    state = {"calls": 0}

    def swap_on_second_read(dfd, rel, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == 2:  # after the manifest, before the data
            assert storage._exchange(v2, saved)
            shutil.rmtree(v2)
        return real(dfd, rel, *args, **kwargs)

    monkeypatch.setattr(storage, "_read_at", swap_on_second_read)
    g = Guide.load(saved, encoder=enc)
    _assert_whole(g, enc)
    assert g.index.count == 7  # the new version, read whole


STRESS_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from textguide.catalog import Catalog
    from textguide.encoder import HashingEncoder
    from textguide.guide import Guide
    from textguide.storage import ConcurrentWriteError

    path, wid, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    g = Guide.load(path, encoder=HashingEncoder(32))
    log, r, end = [], 0, time.time() + seconds
    while time.time() < end:
        batch = [f"w{wid}-{r}-{j}" for j in range(3)]
        op = "remove" if r % 3 == 2 and log and log[-1][0] == "add" else "add"
        ids = log[-1][1] if op == "remove" else batch
        try:
            if op == "add":
                g.onboard(Catalog.from_records([{"id": i, "title": f"writer {wid} product {i}"} for i in ids]),
                          category="Stress")
            else:
                g.remove(ids)
            log.append((op, ids))
        except ConcurrentWriteError:
            log.append(("refused", ids))
            g.refresh()
        r += 1
    print(json.dumps(log))
    """
)


def test_stress_readers_and_writers(saved: Path, enc: HashingEncoder, products: list[dict]) -> None:
    """N reader threads load and query while M writer processes onboard and remove, for a few seconds: every
    load is whole, and every write is applied whole or refused with ConcurrentWriteError."""
    seconds, n_readers = 3.0, 3
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    writers = [subprocess.Popen([sys.executable, "-c", STRESS_WRITER, str(saved), str(w), str(seconds)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
               for w in range(2)]
    stop = threading.Event()
    loads, failures = [0] * n_readers, []

    def reader(n: int) -> None:
        while not stop.is_set():
            try:
                g = Guide.load(saved, encoder=enc)
                _assert_whole(g, enc)
                assert len(g.search("writer product", k=5)) == 5
                loads[n] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(repr(e))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(n_readers)]
    for t in threads:
        t.start()
    try:
        outs = [w.communicate(timeout=120) for w in writers]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    for w, (out, err) in zip(writers, outs):
        assert w.returncode == 0, err
    assert failures == [] and min(loads) > 0
    logs = [json.loads(out) for out, _ in outs]
    applied = [entry for log in logs for entry in log if entry[0] != "refused"]
    assert sum(1 for e in applied if e[0] == "add") >= 2  # both writers got work done
    expected = {p["id"] for p in products}
    for log in logs:  # each writer's own adds and removes, in order: applied whole
        for op, ids in log:
            if op == "add":
                expected |= set(ids)
            elif op == "remove":
                expected -= set(ids)
    final = Guide.load(saved, encoder=enc)
    _assert_whole(final, enc)
    assert set(final.index.live_ids()) == expected


def test_add_coupons_checks_for_another_writer(saved: Path, enc: HashingEncoder) -> None:
    from textguide.storage import ConcurrentWriteError

    a, b = Guide.load(saved, encoder=enc), Guide.load(saved, encoder=enc)
    a.add_coupons({"c1": ["p01", "p02"]})
    with pytest.raises(ConcurrentWriteError, match="changed by another writer"):
        b.add_coupons({"c2": ["p03"]})  # would drop c1
    assert b.coupons == {}
    b.refresh()
    b.add_coupons({"c2": ["p03"]})
    assert Guide.load(saved, encoder=enc).coupons == {"c1": ["p01", "p02"], "c2": ["p03"]}


# ---------------------------------------------------------------------------------------------------------
# 4. the manifest is input too
# ---------------------------------------------------------------------------------------------------------


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(path: Path, manifest) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _reseal(path: Path, manifest: dict | None = None) -> None:
    """Recompute every listed file's checksum: a forged but self-consistent manifest."""
    m = manifest or _manifest(path)
    m["files"] = {rel: {"sha256": hashlib.sha256((path / rel).read_bytes()).hexdigest(),
                        "bytes": (path / rel).stat().st_size} for rel in m["files"]}
    m["manifest_sha256"] = storage.manifest_digest(m)  # the self-checksum guards against damage, not forgery
    _write_manifest(path, m)


@pytest.fixture
def adapted(saved: Path, enc: HashingEncoder) -> Path:
    import torch

    from textguide.adapters import AdapterConfig, MultiTaskAdapter

    torch.manual_seed(0)
    g = Guide.load(saved, encoder=enc)
    g.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=32, dim=16, seq_layers=1, seq_heads=2, max_history=8,
                                                 n_slots=5, dropout=0.0)), {"slot_field": "category"})
    g.add_coupons({"c1": ["p01", "p02"]}, save=False)
    g.save(saved)
    return saved


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda m: [m], r"manifest.json: expected a JSON object, found list"),
        (lambda m: {k: v for k, v in m.items() if k != "index"}, r"manifest.json: 'index' must be an object"),
        (lambda m: dict(m, index=["Flat"]), r"manifest.json: 'index' must be an object"),
        (lambda m: dict(m, encoder=dict(m["encoder"], dim="32")), r"manifest.json: 'encoder' must be an object"),
        (lambda m: dict(m, encoder="hashing:32"), r"manifest.json: 'encoder' must be an object"),
        (lambda m: dict(m, index=dict(m["index"], dim=None)), r"encoder dim 32 differs from index dim None"),
        (lambda m: dict(m, index=dict(m["index"], config={"nope": 1})), r"'index'.config: .*nope"),
        (lambda m: dict(m, index=dict(m["index"], config=[1])), r"'index' needs dim"),
        (lambda m: dict(m, files={}), r"manifest.json: 'files' must be a non-empty object"),
        (lambda m: dict(m, files=None), r"manifest.json: 'files' must be a non-empty object"),
        (lambda m: dict(m, files=dict(m["files"], **{"../../etc/hostname": {"sha256": "0" * 64, "bytes": 1}})),
         r"'../../etc/hostname' is not a plain relative path"),
        (lambda m: dict(m, files=dict(m["files"], **{"/etc/hostname": {"sha256": "0" * 64, "bytes": 1}})),
         r"'/etc/hostname' is not a plain relative path"),
        (lambda m: dict(m, files=dict(m["files"], **{"index.faiss": {"sha256": "xyz", "bytes": 1}})),
         r"manifest.json: files\['index.faiss'\] must be .*the manifest is damaged"),
        (lambda m: dict(m, files=dict(m["files"], **{"index.faiss": "ok"})), r"manifest.json: files\['index.faiss'\]"),
        (lambda m: dict(m, files={k: v for k, v in m["files"].items() if k != "deleted.npy"}),
         r"\['deleted.npy'\] present but not listed"),
        (lambda m: dict(m, format_version=True), r"expected format_version 1"),
    ],
)
def test_damaged_manifest_is_one_clear_error(saved: Path, enc: HashingEncoder, damage, match,
                                            capsys: pytest.CaptureFixture) -> None:
    _write_manifest(saved, damage(_manifest(saved)))
    with pytest.raises(ArtifactError, match=match):
        Guide.load(saved, encoder=enc)
    assert main(["info", str(saved)]) == 2  # the CLI: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("textguide: error: ") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", [lambda m: dict(m, adapter=None),
                                    lambda m: {("adaptor" if k == "adapter" else k): v for k, v in m.items()}])
def test_null_or_renamed_adapter_key_is_an_error_not_a_silent_fallback(adapted: Path, enc, damage) -> None:
    assert Guide.load(adapted, encoder=enc).adapter is not None
    _write_manifest(adapted, damage(_manifest(adapted)))
    with pytest.raises(ArtifactError, match=r"lists adapter files .* 'adapter' section is (null|missing)"):
        Guide.load(adapted, encoder=enc)


def test_unlisted_coupons_are_an_error_not_loaded_unchecked(adapted: Path, enc) -> None:
    m = _manifest(adapted)
    del m["files"]["coupons.parquet"]
    _write_manifest(adapted, m)
    with pytest.raises(ArtifactError, match=r"\['coupons.parquet'\] present but not listed"):
        Guide.load(adapted, encoder=enc)


def test_a_listed_symlink_out_of_the_guide_is_refused(saved: Path, enc, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret", encoding="utf-8")
    (saved / "items.parquet").unlink()
    (saved / "items.parquet").symlink_to(outside)
    _reseal(saved)
    with pytest.raises(ArtifactError, match=r"items.parquet: cannot read it"):
        Guide.load(saved, encoder=enc)


@pytest.mark.parametrize(
    "rel, what",
    [("index.faiss", "a FAISS index"), ("embeddings.npy", "a float32"), ("deleted.npy", "a boolean array"),
     ("items.parquet", "a Parquet table"), ("coupons.parquet", "a Parquet table of coupon_id"),
     ("adapter/adapter.safetensors", "adapter weights"), ("adapter/adapter_config.json", "adapter_config.json")],
)
def test_parser_errors_are_artifact_errors_naming_the_file(adapted: Path, enc, rel: str, what: str) -> None:
    (adapted / rel).write_bytes(b"\x93NUMPY garbage that parses as nothing")
    _reseal(adapted)  # a forged manifest that matches: the parsers see garbage
    with pytest.raises(ArtifactError, match=rf"{rel}.*{what}|{what}.*{rel}|{rel}"):
        Guide.load(adapted, encoder=enc)
    (adapted / rel).write_bytes(b"")
    with pytest.raises(ArtifactError, match=rel):
        Guide.load(adapted, encoder=enc, verify=False)  # unverified: sizes still checked, parse errors still named


def test_wrong_array_dtype_is_named(saved: Path, enc) -> None:
    np.save(saved / "embeddings.npy", np.zeros((20, 32), np.float64))
    _reseal(saved)
    with pytest.raises(ArtifactError, match=r"embeddings.npy: cannot read it as a float32 .*float64"):
        Guide.load(saved, encoder=enc)


def test_manifest_encoder_cannot_run_code_from_its_directory(saved: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A manifest naming a model directory whose modules.json points at code in that directory: refused."""
    import logging

    evil = tmp_path / "evil-model"
    evil.mkdir()
    marker = tmp_path / "pwned"
    (evil / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil:\n    pass\n",
                                         encoding="utf-8")
    (evil / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil_module.Evil"}]),
                                       encoding="utf-8")
    (evil / "config_sentence_transformers.json").write_text("{}", encoding="utf-8")
    m = _manifest(saved)
    m["encoder"]["name"] = str(evil)
    _write_manifest(saved, m)
    g = Guide.load(saved)
    caplog.set_level(logging.INFO, logger="textguide")
    with pytest.raises(ValueError, match=r"cannot load sentence-transformers model"):
        g.search("pan")
    assert not marker.exists()
    assert str(evil) in caplog.text  # says which encoder directory is used


# ---------------------------------------------------------------------------------------------------------
# 5. the CLI: one line and exit status 2 for a user error, never a traceback
# ---------------------------------------------------------------------------------------------------------


def _gz_not_gzip(tmp_path: Path) -> Path:
    p = tmp_path / "products.csv.gz"
    p.write_text("id,title\na,Red mug\n", encoding="utf-8")
    return p


def _gz_truncated(tmp_path: Path) -> Path:
    import gzip

    p = tmp_path / "products.csv.gz"
    p.write_bytes(gzip.compress(b"id,title\n" + b"a,Red mug\n" * 1000)[:60])
    return p


def _a_directory(tmp_path: Path) -> Path:
    p = tmp_path / "catalog_dir.csv"
    p.mkdir()
    return p


@pytest.mark.parametrize("make, message", [(_gz_not_gzip, "not a gzip file"), (_gz_truncated, "truncated or corrupted"),
                                           (_a_directory, "is a directory, not a catalog file")])
@pytest.mark.parametrize("command", ["build-index", "onboard"])
def test_cli_bad_catalog_file_is_one_line(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make, message,
                                          command: str) -> None:
    src = make(tmp_path)
    argv = (["build-index", str(src), str(tmp_path / "out"), "--encoder", "hashing:32", "--no-cache"]
            if command == "build-index" else ["onboard", str(saved), str(src), "--no-cache", "--nice", "0"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("textguide: error: ") and message in err and str(src) in err
    assert "Traceback" not in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# 3. coupons after their products are removed
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["text", "adapter"])
def test_rank_coupons_after_removing_covered_products(adapted: Path, enc, method: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    g = Guide.load(adapted, encoder=enc)
    g.add_coupons({"c2": ["p05", "p06"], "c3": ["p09"]})
    g.remove(["p02", "p09"])  # c1 loses one of its two products, c3 its only one
    hits = g.rank_coupons(["p03", "p04"], method=method)
    assert sorted(hits.ids) == ["c1", "c2"] and hits.skipped == ["c3"]
    assert {h["id"]: h["items"] for h in hits.items} == {"c1": 1, "c2": 2}
    assert "c3" in caplog.text and "no products left" in caplog.text
    # c1 now scores exactly as a coupon covering only p01 (what is left)
    alone = g.rank_coupons(["p03", "p04"], {"c1-left": ["p01"]}, method=method)
    assert hits.scores[hits.ids.index("c1")] == pytest.approx(alone.scores[0])
    back = Guide.load(adapted, encoder=enc)  # and the same after a reload
    assert back.rank_coupons(["p03", "p04"], ["c1", "c3"], method=method).ids == ["c1"]
    with pytest.raises(ValueError, match=r"no coupons to rank.*\['c3'\].*removed"):
        g.rank_coupons(["p03"], ["c3"], method=method)


# ---------------------------------------------------------------------------------------------------------
# 6. bad query arguments
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\t\n", ["pan", " "]])
def test_empty_query_is_refused(guide: Guide, query) -> None:
    with pytest.raises(ValueError, match=r"query.* is empty"):
        guide.search(query)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"category": 123}, r"category must be a string or a list of strings, got int"),
     ({"category": ["Tops", 1]}, r"category must be a string or a list of strings"),
     ({"category": ""}, r"category must be"),
     ({"where": ["x"]}, r"where must be a dict of field -> value .*got list"),
     ({"where": "category=Tops"}, r"where must be a dict"),
     ({"where": {1: "Tops"}}, r"where: field names must be strings, got 1")],
)
def test_bad_filters_name_the_argument(guide: Guide, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        guide.search("pan", **kwargs)
    with pytest.raises(ValueError, match=match):
        guide.similar("p01", **kwargs)
    with pytest.raises(ValueError, match=match):
        guide.recommend(["p01"], method="text", **kwargs)


@pytest.mark.parametrize("bad", [None, 123, {"p01"}, "p01", [1, 2]])
def test_bad_id_lists_name_the_argument(saved: Path, enc, bad) -> None:
    g = Guide.load(saved, encoder=enc)
    g.add_coupons({"c1": ["p01"]}, save=False)
    with pytest.raises((ValueError, TypeError), match="history"):
        g.recommend(bad, method="text")
    with pytest.raises((ValueError, TypeError), match="items"):
        g.complete_outfit(bad, method="text")
    with pytest.raises((ValueError, TypeError), match="history"):
        g.rank_coupons(bad, method="text")


# ---------------------------------------------------------------------------------------------------------
# 7. catalogs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet"])
def test_nan_like_titles_are_real_words(tmp_path: Path, ext: str) -> None:
    import pandas as pd

    from textguide.catalog import load_catalog

    titles = ["NaN", "nan", "NULL", "None", "N/A", "NA", "null"]
    frame = pd.DataFrame({"id": [f"i{n}" for n in range(len(titles))], "title": titles, "brand": titles})
    path = tmp_path / f"c.{ext}"
    if ext == "parquet":
        frame.to_parquet(path)
    elif ext == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if ext == "tsv" else ",")
    cat = load_catalog(path)
    assert cat.metadata["title"].tolist() == titles and cat.metadata["brand"].tolist() == titles
    assert cat.texts[0] == "NaN. NaN" and cat.report.skipped_empty_title == []


@pytest.mark.parametrize("text, match", [
    ("id,title,brand\na,Mug,Forge\nb,Cup\nc,Plate,Lumen\n", r"line 3 has 2 fields, the header has 3"),
    ("id,title\na,Mug\nb,Cup,extra,more\n", r"line 3 has 4 fields, the header has 2"),
    ('id,title\na,"Mug\nwith a newline"\nb\n', r"line 4 has 1 field, the header has 2"),
])
def test_ragged_csv_row_is_reported_at_its_line(tmp_path: Path, text: str, match: str) -> None:
    from textguide.catalog import load_catalog

    path = tmp_path / "c.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"c.csv: {match}"):
        load_catalog(path)


def test_duplicated_header_is_an_error(tmp_path: Path) -> None:
    from textguide.catalog import load_catalog

    path = tmp_path / "c.csv"
    path.write_text("id,title,title\na,Mug,Cup\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.csv: column 'title' appears 2 times in the header"):
        load_catalog(path)


@pytest.mark.parametrize("title, kind", [(["a", "b"], "list"), ({"x": 1}, "dict"), (123, "int"), (True, "bool")])
def test_non_string_title_names_the_row(tmp_path: Path, title, kind: str) -> None:
    from textguide.catalog import load_catalog

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "title": "Mug"}) + "\n" + json.dumps({"id": "b", "title": title}) + "\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"column 'title' \(title\) holds a {kind} value, not text, in row 2 \(id 'b'\)"):
        load_catalog(path)


@pytest.mark.parametrize("price, match", [("-3", "negative"), ("inf", "not finite"), ("nan", "non-numeric"),
                                          ("1e400", "not finite")])
def test_prices_are_finite_and_not_negative(tmp_path: Path, price: str, match: str) -> None:
    from textguide.catalog import load_catalog

    path = tmp_path / "c.csv"
    path.write_text(f"id,title,price\na,Mug,3\nb,Cup,{price}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"'price' \(price\) .*{match}.*id 'b'"):
        load_catalog(path)


@pytest.mark.parametrize("template", ["{title.__class__}", "{title.__class__.__mro__}", "{title[0]}", "{0}",
                                      "{title:{title.__class__}}", "{title!r:>{title.__doc__}}"])
def test_template_may_only_name_columns(template: str) -> None:
    with pytest.raises(ValueError, match=r"may only name columns"):
        Catalog.from_records([{"id": "a", "title": "Mug"}], template=template)


# ---------------------------------------------------------------------------------------------------------
# 8. no raw user data in artifacts
# ---------------------------------------------------------------------------------------------------------


def _fake_scientific(root: Path, n_items: int = 40, n_users: int = 24) -> list[str]:
    """A tiny dataset in the UniSRec Scientific format whose user ids are marked; returns those ids."""
    folder = root / "amazon-scientific"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    asins = [f"B{n:09d}" for n in range(n_items)]
    kinds = ["Sanding roll", "Lab beaker", "Safety glove", "Drill bit", "Cable tie"]
    (folder / "Scientific.item2index").write_text("".join(f"{a}\t{n}\n" for n, a in enumerate(asins)), encoding="utf-8")
    (folder / "Scientific.text").write_text("item_id:token\ttext:token_seq\n" + "".join(
        f"{a}\t{kinds[n % 5]} model {n}. Industrial & Scientific Lab & Scientific Products. Brand{n % 3}. \n"
        for n, a in enumerate(asins)), encoding="utf-8")
    users = [f"SECRETUSER{n:04d}X" for n in range(n_users)]
    (folder / "Scientific.user2index").write_text("".join(f"{u}\t{n}\n" for n, u in enumerate(users)), encoding="utf-8")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid = [head], [head]
    for u in range(n_users):
        kind = u % 5
        seq = [int(i) for i in rng.permutation(np.arange(kind, n_items, 5))[:7]]
        for t in range(2, 6):
            train.append(f"{u}\t{' '.join(map(str, seq[:t]))}\t{seq[t]}\n")
        valid.append(f"{u}\t{' '.join(map(str, seq[:6]))}\t{seq[6]}\n")
    (folder / "Scientific.train.inter").write_text("".join(train), encoding="utf-8")
    (folder / "Scientific.valid.inter").write_text("".join(valid), encoding="utf-8")
    return users


def test_trained_guide_reports_and_checkpoints_hold_no_user_ids(tmp_path: Path, monkeypatch) -> None:
    from textguide.bench.workflows import train_recipe

    users = _fake_scientific(tmp_path / "data")
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path / "data"))
    out, ckpt = tmp_path / "guide", tmp_path / "checkpoints"
    train_recipe("amazon-scientific", out, steps=20, max_seconds=30, checkpoint_dir=str(ckpt),
                 encoder=HashingEncoder(384))  # the default model width
    files = [p for d in (out, ckpt) for p in d.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert "guide/manifest.json" in names and any(n.startswith("guide/reports/") for n in names)
    assert any(n.startswith("checkpoints/") for n in names) and any(n.startswith("guide/adapter/") for n in names)
    g = Guide.load(out, encoder=HashingEncoder(384))
    assert g.adapter is not None
    for p in files:
        data = p.read_bytes()
        leaked = [u for u in users if u.encode() in data or u.encode("utf-16-le") in data]
        assert leaked == [], f"{p} holds user ids {leaked[:3]}"
    assert not any(u.encode() in (tmp_path / "guide").parent.joinpath(".guide.lock").read_bytes() for u in users)


def test_evaluate_writes_beside_the_training_report(tmp_path: Path, monkeypatch) -> None:
    from textguide.bench.workflows import evaluate_recipe, train_recipe

    _fake_scientific(tmp_path / "data")
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path / "data"))
    out = tmp_path / "guide"
    train_recipe("amazon-scientific", out, steps=20, max_seconds=30, encoder=HashingEncoder(384))
    trained = (out / "reports" / "report.md").read_text(encoding="utf-8")
    assert trained.startswith("# textguide train amazon-scientific")
    evaluate_recipe("amazon-scientific", out)
    assert (out / "reports" / "report.md").read_text(encoding="utf-8") == trained  # not overwritten
    evaluated = (out / "reports" / "evaluate" / "report.md").read_text(encoding="utf-8")
    assert evaluated.startswith("# textguide evaluate amazon-scientific") and "| text similarity |" in evaluated


def test_damage_inside_the_manifest_is_blamed_on_the_manifest_not_a_data_file(saved: Path, enc) -> None:
    m = _manifest(saved)
    assert m["manifest_sha256"] == storage.manifest_digest(m)  # written with its own checksum
    good = m["files"]["index.faiss"]["sha256"]
    # one hex digit of a recorded checksum flipped: the data file is fine, the manifest is not
    damaged = json.loads(json.dumps(m))
    damaged["files"]["index.faiss"]["sha256"] = ("0" if good[0] != "0" else "1") + good[1:]
    _write_manifest(saved, damaged)
    with pytest.raises(ArtifactError, match=r"manifest.json: the manifest is damaged \(its own manifest_sha256"):
        Guide.load(saved, encoder=enc)
    with pytest.raises(ArtifactError, match=r"manifest.json: the manifest is damaged"):
        storage.read_manifest(saved, kind=m["format"], format_version=m["format_version"])
    # a recorded size changed: the same
    damaged = json.loads(json.dumps(m))
    damaged["files"]["index.faiss"]["bytes"] += 1
    _write_manifest(saved, damaged)
    with pytest.raises(ArtifactError, match=r"the manifest is damaged"):
        Guide.load(saved, encoder=enc)
    # an intact manifest and a corrupted data file: the file is blamed
    _write_manifest(saved, m)
    victim = saved / "index.faiss"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"index.faiss: checksum mismatch .* the file is corrupted"):
        Guide.load(saved, encoder=enc)
    # a manifest written before the self-checksum existed: data damage is still reported on the file
    _write_manifest(saved, {k: v for k, v in m.items() if k != "manifest_sha256"})
    with pytest.raises(ArtifactError, match=r"index.faiss: checksum mismatch"):
        Guide.load(saved, encoder=enc)
