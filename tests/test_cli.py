"""The `textguide` command line, driven through textguide.cli.main([...]) with the hashing encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textguide.cli import build_parser, main
from textguide.encoder import HashingEncoder
from textguide.guide import Guide


@pytest.fixture
def built(catalog_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "guide"
    rc = main(["build-index", str(catalog_csv), str(out), "--encoder", "hashing:32", "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"built {out}: 20 items, encoder hashing:32 (32-d), index Flat" in captured.out
    return out


def test_build_index_writes_a_loadable_guide(built: Path) -> None:
    g = Guide.load(built)
    assert g.index.count == 20 and g.encoder_info["name"] == "hashing:32"
    assert (built / "manifest.json").is_file()


def test_search_prints_ranked_results(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(built), "cast iron pan", "wool", "-k", "3"]) == 0
    out = capsys.readouterr().out
    want = Guide.load(built, encoder=HashingEncoder(32)).search(["cast iron pan", "wool"], k=3)
    lines = out.splitlines()
    assert "cast iron pan" in lines and "wool" in lines
    ranked = [ln.split() for ln in lines if ln.strip()[:2].rstrip(".").isdigit()]
    assert [r[2] for r in ranked] == want[0].ids + want[1].ids  # rank, score, id, title...
    assert [r[0] for r in ranked] == ["1.", "2.", "3."] * 2


def test_search_json_and_category(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(built), "summer", "-k", "2", "--category", "Shoes", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    want = Guide.load(built, encoder=HashingEncoder(32)).search("summer", k=2, category="Shoes")
    assert rec["query"] == "summer" and rec["ids"] == want.ids
    assert [it["category"] for it in rec["items"]] == ["Shoes", "Shoes"]
    assert rec["scores"] == pytest.approx(want.scores.tolist(), abs=1e-4)


def test_similar(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["similar", str(built), "p01", "p13", "-k", "4", "--json"]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    g = Guide.load(built, encoder=HashingEncoder(32))
    assert [r["ids"] for r in recs] == [g.similar("p01", k=4).ids, g.similar("p13", k=4).ids]
    assert "p01" not in recs[0]["ids"] and recs[0]["query"].startswith("similar to p01 (Cast iron skillet 26 cm)")
    assert main(["similar", str(built), "p05", "--category", "Tops"]) == 0
    out = capsys.readouterr().out
    assert "similar to p05 (Linen summer shirt)" in out and out.count("Tops") == 3  # the 3 other tops


def test_info(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(built)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["items"] == 20 and info["encoder"]["dim"] == 32 and info["index"]["factory"] == "Flat"
    assert info["categories"] == {"Kitchen": 4, "Tops": 4, "Shoes": 4, "Bags": 3, "Decor": 5}


def test_bad_catalog_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,Mug\n", encoding="utf-8")
    rc = main(["build-index", str(bad), str(tmp_path / "out"), "--encoder", "hashing:32", "--no-cache"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("textguide: error: ")
    assert "missing required column 'title'" in captured.err and "found columns ['id', 'name']" in captured.err
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_column_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "c.tsv"
    src.write_text("sku\tname\tkind\nA\tRed mug\tKitchen\nB\tBlue scarf\tAccessories\nA\tRed mug v2\tKitchen\n", encoding="utf-8")
    args = ["build-index", str(src), str(tmp_path / "g"), "--encoder", "hashing:32", "--no-cache", "--id-column", "sku",
            "--title-column", "name", "--category-column", "kind", "--description-column", "none",
            "--brand-column", "none", "--price-column", "none"]
    assert main(args) == 2 and "1 duplicate ids, first ['A']" in capsys.readouterr().err
    assert main(args + ["--on-duplicate", "last"]) == 0
    g = Guide.load(tmp_path / "g")
    assert sorted(g.index.live_ids()) == ["A", "B"] and g.index.item("A")["title"] == "Red mug v2"


def test_bad_factory_exit_code_2(catalog_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["build-index", str(catalog_csv), str(tmp_path / "g"), "--encoder", "hashing:32", "--no-cache",
               "--factory", "IVF1024,Flat"])
    assert rc == 2 and "cannot train FAISS index 'IVF1024,Flat' on 20 vectors" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["similar", "{g}", "nope"], "unknown item id 'nope'"),
        (["search", "{g}", "pan", "-k", "0"], "k must be a positive integer, got 0"),
        (["search", "{missing}", "pan"], "no such directory"),
    ],
)
def test_query_errors_exit_code_2(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv, message) -> None:
    argv = [a.format(g=built, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("textguide: error: ") and message in err


def test_corrupted_guide_exit_code_2(built: Path, capsys: pytest.CaptureFixture) -> None:
    p = built / "embeddings.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert main(["info", str(built)]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "textguide build-index" in err


def test_parser_requires_a_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("hm", "or-baskets", "cannot transfer between 'hm' and 'or-baskets': one is a recommendation domain"),
        ("hm-baskets", "office", "cannot transfer between 'hm-baskets' and 'office'"),
    ],
)
def test_transfer_between_task_kinds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, source, target,
                                                message) -> None:
    out = tmp_path / "t"
    assert main(["transfer", "--source", source, "--target", target, str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written
    with pytest.raises(ValueError, match="target_fraction must be in"):
        from textguide.bench.workflows import transfer_domains

        transfer_domains("hm-baskets", "or-baskets", out, target_fraction=1.5)


@pytest.mark.parametrize("argv, seconds, single", [
    (["train", "all", "OUT"], 900.0, 300.0),  # 10 minutes per task: half shared model, half single-task challenger
    (["train", "all", "OUT", "--no-single-task-challengers"], 1800.0, None),  # the shared model gets it all
    (["train", "amazon-scientific", "OUT"], 600.0, None),
    (["train", "all", "OUT", "--max-seconds", "10"], 15.0, 5.0),
    (["train", "polyvore", "OUT", "--max-seconds", "10"], 5.0, 5.0),  # half to the cross-validated challenger
    (["train", "polyvore", "OUT", "--outfit-folds", "0"], 600.0, None),
    (["train", "all", "OUT", "--outfit-folds", "0"], 900.0, 300.0),  # still a challenger per task
])
def test_train_budget_is_per_task(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv, seconds,
                                  single) -> None:
    import textguide.bench.workflows as workflows

    seen = {}

    def fake_train_recipe(recipe, output, **kw):
        seen.update(kw, recipe=recipe)
        return {"markdown": "ok"}

    monkeypatch.setattr(workflows, "train_recipe", fake_train_recipe)
    assert main(argv) == 0
    assert seen["max_seconds"] == seconds and seen["recipe"] == argv[1] and seen["single_seconds"] == single
    assert seen["outfit_folds"] == (0 if "--outfit-folds" in argv else 5)
    assert seen["steps"] >= 10_000  # the budget and early stopping end training, not a step cap
