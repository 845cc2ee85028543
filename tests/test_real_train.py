"""One short real-data training smoke test (pytest -m real): Amazon Scientific with the packaged MiniLM.

The full benchmark runs live in scripts/bench_multitask.py; this only proves the real pipeline (dataset
-> guide -> task -> training -> evaluation -> save/load -> Guide.recommend) runs end to end and learns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_scientific_end_to_end(tmp_path: Path) -> None:
    if not (DATA / "amazon-scientific" / "Scientific.text").exists():
        pytest.skip(f"real data not found under {DATA}")
    from textguide.bench import recipes
    from textguide.encoder import EmbeddingCache, load_encoder
    from textguide.guide import Guide
    from textguide.training import TrainConfig, train
    from textguide.bench.workflows import new_model

    bench = recipes.prepare_scientific(load_encoder(), EmbeddingCache(tmp_path / "cache"))
    bench.report_histories = bench.report_histories[:1500]
    bench.report_targets = bench.report_targets[:1500]
    popularity = recipes.evaluate_sequences(bench, recipes.sequence_scores(bench, "popularity"))
    model = new_model(("recommend",))
    train(model, {"recommend": bench.task}, TrainConfig(steps=40, batch_size=128, eval_every=40, patience=None,
                                                        show_progress=False))
    trained = recipes.evaluate_sequences(bench, recipes.sequence_scores(bench, "adapter", model))
    assert trained["Recall@10"] > 1.5 * popularity["Recall@10"], (trained, popularity)

    bench.guide.set_adapter(model)
    bench.guide.save(tmp_path / "sci")
    guide = Guide.load(tmp_path / "sci")
    row = bench.report_histories[0]
    history = [guide.index.ids[i] for i in row]
    hits = guide.recommend(history, k=10)
    assert hits.method == "adapter" and len(hits) == 10 and not set(history) & set(hits.ids)
    # the guide's answer equals the benchmark's scorer on the same history
    scores = recipes.sequence_scores(bench, "adapter", model)([row])[0]
    scores[row] = -np.inf
    assert hits.ids == [guide.index.ids[i] for i in np.argsort(-scores, kind="stable")[:10]]

    # the serving guard: an adapter that ranks worse than text similarity (here: its weights scrambled) is never
    # served in its place; its blend weight is picked on one half of the selection users, and it must beat text
    # significantly on the other half
    import torch

    from textguide.bench.workflows import choose_text_blend

    scrambled = new_model(("recommend",), seed=1)
    with torch.no_grad():
        for p in scrambled.parameters():
            p.normal_(0.0, 1.0)
    choice = choose_text_blend(bench, "recommend", scrambled, grid=(0.0, 0.5))
    assert choice["methods"] == {"recommend": "text"}, choice["selection"]["guard"]
    assert choice["selection"]["guard"]["switched"] is False
    assert scrambled.config.text_blend["recommend"] == choice["selection"]["text_blend"]
