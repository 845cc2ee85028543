"""Encoders and the embedding cache, with the fake HashingEncoder (no model files)."""

from __future__ import annotations

from pathlib import Path
import numpy as np
import pytest

from textguide.encoder import EmbeddingCache, HashingEncoder, TextEncoder, encode_texts, load_encoder


TEXTS = [f"product {i}: {w} {c} widget size {i % 7}" for i, (w, c) in enumerate(
    (w, c) for w in ["steel", "brass", "oak", "linen", "wool", "glass", "clay", "cotton", "paper", "resin"]
    for c in ["red", "blue", "green", "black", "white", "grey", "navy", "olive", "amber", "teal"] * 4
)]  # 400 distinct texts


# ---------------------------------------------------------------------------------------------------------
# HashingEncoder
# ---------------------------------------------------------------------------------------------------------


def test_hashing_encoder_shape_dtype_and_normalised() -> None:
    enc = HashingEncoder(dim=32)
    x = enc.encode(["cast iron pan", "", "!!!", "linen shirt"])
    assert x.shape == (4, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert isinstance(enc, TextEncoder)
    assert enc.encode([]).shape == (0, 32)


def test_hashing_encoder_deterministic() -> None:
    a = HashingEncoder(dim=64).encode(TEXTS[:50])
    b = HashingEncoder(dim=64).encode(TEXTS[:50])  # a fresh instance: nothing kept between calls
    np.testing.assert_array_equal(a, b)
    # one text at a time == batch
    np.testing.assert_array_equal(np.vstack([HashingEncoder(dim=64).encode([t]) for t in TEXTS[:5]]), a[:5])
    # another seed is another encoder
    c = HashingEncoder(dim=64, seed=1).encode(TEXTS[:50])
    assert not np.allclose(a, c)
    assert HashingEncoder(64).fingerprint != HashingEncoder(64, seed=1).fingerprint != HashingEncoder(32).fingerprint


def test_hashing_encoder_is_lexical() -> None:
    enc = HashingEncoder(dim=64)
    q, near, far = enc.encode(["cast iron frying pan", "cast iron skillet pan", "silk evening dress"])
    assert q @ near > q @ far + 0.2


def test_encoder_rejects_non_string_input() -> None:
    enc = HashingEncoder(dim=32)
    with pytest.raises(ValueError, match=r"takes a list of strings, got a single str; wrap it as \[text\]"):
        enc.encode("cast iron pan")
    with pytest.raises(ValueError, match=r"text 1 is int, expected str"):
        enc.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"dim must be positive, got 0"):
        HashingEncoder(dim=0)


def test_load_encoder_hashing_spec() -> None:
    enc = load_encoder("hashing:48")
    assert isinstance(enc, HashingEncoder) and enc.dim == 48 and enc.name == "hashing:48"
    with pytest.raises(ValueError, match=r"encoder spec 'hashing:big': expected hashing:DIM with an integer DIM"):
        load_encoder("hashing:big")


# ---------------------------------------------------------------------------------------------------------
# encode_texts and EmbeddingCache
# ---------------------------------------------------------------------------------------------------------


def test_encode_texts_preserves_order_and_duplicates(counting) -> None:
    enc = counting(HashingEncoder(dim=32))
    texts = ["b shirt", "a pan", "b shirt", "c vase", "a pan", "b shirt"]
    x = encode_texts(enc, texts)
    ref = HashingEncoder(dim=32)
    assert x.shape == (6, 32) and x.dtype == np.float32
    for row, t in zip(x, texts):
        np.testing.assert_array_equal(row, ref.encode([t])[0])
    assert enc.calls == [["b shirt", "a pan", "c vase"]]  # each distinct text encoded once
    assert encode_texts(enc, []).shape == (0, 32)


def test_cache_reencodes_only_changed_texts(tmp_path: Path, counting) -> None:
    cache = EmbeddingCache(tmp_path)
    enc = counting(HashingEncoder(dim=32))
    first = encode_texts(enc, TEXTS, cache=cache)
    assert sorted(enc.seen) == sorted(TEXTS)

    edited = list(TEXTS)
    changed = list(range(0, 400, 100))  # 1% of 400 texts
    for i in changed:
        edited[i] = edited[i] + " (new edition)"
    enc.calls.clear()
    second = encode_texts(enc, edited, cache=cache)
    assert sorted(enc.seen) == sorted(edited[i] for i in changed)

    # the cached rows are the encoder's own vectors, and the edited rows are fresh ones
    direct = HashingEncoder(dim=32).encode(edited)
    np.testing.assert_allclose(second, direct, rtol=0, atol=1e-7)
    same = [i for i in range(400) if i not in changed]
    np.testing.assert_array_equal(second[same], first[same])

    # a new process (new cache object on the same directory) encodes nothing
    cache.close()
    cache2 = EmbeddingCache(tmp_path)
    enc.calls.clear()
    third = encode_texts(enc, edited, cache=cache2)
    assert enc.seen == []
    np.testing.assert_array_equal(third, second)
    cache2.close()


def test_cache_never_shares_entries_across_fingerprints(tmp_path: Path, counting) -> None:
    cache = EmbeddingCache(tmp_path)
    texts = TEXTS[:30]
    a = counting(HashingEncoder(dim=32, seed=0))
    b = counting(HashingEncoder(dim=32, seed=1))  # same name and dim, another fingerprint
    c = counting(HashingEncoder(dim=16, seed=0))
    xa = encode_texts(a, texts, cache=cache)
    xb = encode_texts(b, texts, cache=cache)
    xc = encode_texts(c, texts, cache=cache)
    assert sorted(b.seen) == sorted(texts) and sorted(c.seen) == sorted(texts)  # nothing reused
    np.testing.assert_array_equal(xb, HashingEncoder(dim=32, seed=1).encode(texts))
    np.testing.assert_array_equal(xc, HashingEncoder(dim=16, seed=0).encode(texts))
    assert not np.allclose(xa, xb)
    # and each encoder now hits its own entries
    for enc, want in ((a, xa), (b, xb), (c, xc)):
        enc.calls.clear()
        np.testing.assert_array_equal(encode_texts(enc, texts, cache=cache), want)
        assert enc.seen == []
    cache.close()


def test_cache_ignores_vectors_of_another_dimension(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    fp = "same-fingerprint"
    cache.put(fp, [EmbeddingCache.key("x")], np.ones((1, 8), np.float32))
    assert cache.get(fp, [EmbeddingCache.key("x")], dim=16) == {}
    np.testing.assert_array_equal(cache.get(fp, [EmbeddingCache.key("x")], dim=8)[EmbeddingCache.key("x")], np.ones(8))
    cache.close()


def test_encode_texts_checks_encoder_output() -> None:
    class Broken(HashingEncoder):
        def encode(self, texts, batch_size=64, show_progress=None):  # type: ignore[override]
            return np.zeros((len(texts), 3), np.float32)

    with pytest.raises(ValueError, match=r"encoder hashing:8 returned shape \(2, 3\), expected \(2, 8\)"):
        encode_texts(Broken(dim=8), ["a", "b"])


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textguide.encoder import default_cache_dir

    monkeypatch.setenv("TEXTGUIDE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    cache = EmbeddingCache()
    assert cache.path == tmp_path / "c" / "embeddings.sqlite" and cache.path.exists()
    cache.close()
