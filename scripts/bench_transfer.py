#!/usr/bin/env python3
"""Transfer benchmark: does a recommendation model trained on one domain help another, and when does it hurt?

One command per experiment (each prints its tables and writes reports/transfer/<experiment>.{md,json}):

    python scripts/bench_transfer.py --experiment baselines   # H&M and Online Retail alone: popularity, text, adapter
    python scripts/bench_transfer.py --experiment hm-or       # fashion (H&M) -> home goods (Online Retail)
    python scripts/bench_transfer.py --experiment ind-off     # Amazon Industrial & Scientific -> Office
    python scripts/bench_transfer.py --experiment off-ind     # Amazon Office -> Industrial & Scientific
    python scripts/bench_transfer.py --experiment hm-or-baskets   # basket complements: H&M -> Online Retail
    python scripts/bench_transfer.py --experiment hm-or --render reports/transfer/hm-or.json   # re-print tables

A transfer experiment trains the source model (or reuses indexes/transfer-sources/<source> when present; the
baselines experiment trains the H&M and Online Retail ones; --retrain-source forces training), then, for every
target training size (0 %, 1 %, 10 %, 100 % of the target's training users), runs
``textguide.transfer.transfer(method="auto")`` with every candidate (target-only, model-based finetune /
freeze-shared / L2-SP, feature-based MMD / CORAL, instance-based): all candidates are scored on the report
split, and the guard's choice (made on the selection split) is reported as ``auto``. Each candidate trains for at
most --budget seconds (--budget-full at 100 %). An alpha sweep of the feature-based methods runs at one size.
The 100 % target guide is saved under indexes/transfer-<experiment> with the chosen adapter and
reports/transfer.json. Times on a shared 2-core machine: docs/transfer.md.

hm-or-baskets does the same for complementary items: the source is an outfit adapter trained on H&M same-day
baskets (``recipes.prepare_hm_baskets``, slot = product group), the target Online Retail invoices
(``recipes.prepare_or_baskets``, slot = text cluster); sizes are fractions of the target's training baskets,
the guard selects on FITB, and the report split is scored by ``recipes.evaluate_outfits``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path


from textguide.bench import domains, recipes
from textguide.adapters import AdapterConfig, MultiTaskAdapter, load_adapter, save_adapter
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.evaluate import relative_gain
from textguide.tasks import TASKS
from textguide.training import TrainConfig, train
from textguide.transfer import CANDIDATES, TransferConfig, transfer
from textguide.bench.workflows import markdown_table, save_transferred

logger = logging.getLogger("textguide")

EXPERIMENTS = {
    # name: (source, target, report metrics, selection metric: the task's, the one early stopping watches too)
    "hm-or": ("hm", "online-retail", ("Recall@12", "MAP@12", "NDCG@12"), TASKS["recommend"].select_metric),
    "ind-off": ("industrial", "office", ("Recall@10", "NDCG@10"), TASKS["recommend"].select_metric),
    "off-ind": ("office", "industrial", ("Recall@10", "NDCG@10"), TASKS["recommend"].select_metric),
    "hm-or-baskets": ("hm-baskets", "or-baskets", ("FITB", "CTL-Recall@10", "AUC"), TASKS["outfit"].select_metric),
}
BASKETS = recipes.BASKET_DOMAINS


def transfer_candidates(args: argparse.Namespace) -> list[str]:
    """Every transfer candidate; the feature ones with their own alpha (MMD and CORAL differ in scale)."""
    out = []
    for c in CANDIDATES:
        if c == "feature:mmd":
            c = f"{c}@{args.alpha_mmd:g}"
        elif c == "feature:coral":
            c = f"{c}@{args.alpha_coral:g}"
        if c != "target-only":
            out.append(c)
    return out


def build_model(seed: int, n_slots: int | None = None) -> MultiTaskAdapter:
    """The adapter of every run: next-item recommendation, or complements with ``n_slots`` slots."""
    import torch

    torch.manual_seed(seed)
    if n_slots is not None:
        return MultiTaskAdapter(AdapterConfig(input_dim=384, dim=64, max_history=20, dropout=0.0,
                                              tasks=("outfit",), n_slots=n_slots))
    return MultiTaskAdapter(AdapterConfig(input_dim=384, dim=64, seq_layers=1, seq_heads=2, max_history=20,
                                          dropout=0.0, tasks=("recommend",)))


def train_config(n_examples: int, args: argparse.Namespace, seconds: float | None = None,
                 max_steps: int | None = None) -> TrainConfig:
    """Steps grow with the data (``epochs`` passes, at least ``min_steps``), capped by steps and seconds."""
    steps = max(args.min_steps, math.ceil(args.epochs * n_examples / args.batch))
    steps = min(steps, max_steps or args.max_steps)
    eval_every = max(10, min(args.eval_every, steps // 10))  # small data overfits fast: look often
    return TrainConfig(steps=steps, batch_size=args.batch, lr=args.lr, eval_every=eval_every, patience=args.patience,
                       seed=args.seed, num_negatives=1024, full_softmax_max=1000,
                       max_seconds=seconds or args.budget, show_progress=False)


def fmt_gain(g: float | None) -> str:
    return "n/a" if g is None else f"{g:+.1%}"


def safe_gain(new: dict[str, float], base: dict[str, float], metrics: tuple[str, ...]) -> dict[str, float | None]:
    out = {}
    for m in metrics:
        out[m] = None if base[m] == 0 else relative_gain({m: new[m]}, {m: base[m]})[m]
    return out


# ------------------------------------------------------------------------------------------ experiments
def source_model(bench: domains.DomainBench | recipes.OutfitBench, args: argparse.Namespace
                 ) -> tuple[MultiTaskAdapter, dict]:
    """Load indexes/transfer-sources/<name> if present (and not --retrain-source), else train and save it."""
    path = Path(args.out) / "transfer-sources" / bench.name
    if path.is_dir() and not args.retrain_source:
        meta = json.loads((path / "train_meta.json").read_text())
        logger.info("reusing the source model %s (trained in %.0fs)", path, meta["seconds"])
        return load_adapter(path), {**meta, "reused": str(path)}
    model = build_model(args.seed, len(bench.slots) if isinstance(bench, recipes.OutfitBench) else None)
    cfg = train_config(len(bench.task), args, seconds=args.source_budget, max_steps=args.source_steps)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "lr": args.source_lr, "eval_every": 100, "patience": 8})
    t = time.time()
    res = train(model, {bench.task.kind: bench.task}, cfg)
    meta = {"seconds": round(time.time() - t, 1), "best_step": res.best_step, "steps": res.history[-1]["step"],
            "select": res.best_metrics, "train_config": cfg.to_dict()}
    save_adapter(model, path)
    (path / "train_meta.json").write_text(json.dumps(meta, indent=1))
    logger.info("trained the source model on %s in %.0fs: %s", bench.name, meta["seconds"], res.best_metrics)
    return model, meta


def run_baselines(args: argparse.Namespace, enc, cache) -> tuple[str, dict]:
    lines, out = [], {}
    for name in ("hm", "online-retail"):
        t = time.time()
        bench = domains.prepare_domain(name, enc, cache)
        prep = time.time() - t
        rows = {m: domains.evaluate_domain(bench, domains.domain_scorer(bench, m)) for m in ("popularity", "text")}
        rows["untrained adapter (last item, text space)"] = domains.evaluate_domain(
            bench, domains.domain_scorer(bench, "adapter", build_model(args.seed)))
        model, meta = source_model(bench, args)
        rows["adapter (trained alone)"] = domains.evaluate_domain(bench, domains.domain_scorer(bench, "adapter", model))
        metrics = list(rows["popularity"])
        lines += [f"## {name} alone ({json.dumps(bench.info)})", "",
                  markdown_table(["method", *metrics], [[k, *(f"{v[m]:.4f}" for m in metrics)] for k, v in rows.items()]),
                  "", f"Data preparation {prep:.0f}s; adapter training {meta['seconds']:.0f}s "
                  f"({meta['steps']} steps, best {meta['best_step']}{', reused' if 'reused' in meta else ''}).", ""]
        out[name] = {"results": rows, "info": bench.info, "train": meta, "prep_seconds": prep}
    return "\n".join(lines), out


def prepare(name: str, enc, cache) -> domains.DomainBench | recipes.OutfitBench:
    return BASKETS[name](enc, cache) if name in BASKETS else domains.prepare_domain(name, enc, cache)


def evaluate(bench: domains.DomainBench | recipes.OutfitBench, method: str, model=None) -> dict[str, float]:
    """Report-split metrics of a method ("adapter", "text" or "popularity") on a benchmark."""
    if isinstance(bench, recipes.OutfitBench):
        return recipes.evaluate_outfits(bench, recipes.outfit_scorer(bench, method, model))
    return domains.evaluate_domain(bench, domains.domain_scorer(bench, method, model))


def run_transfer(args: argparse.Namespace, enc, cache) -> tuple[str, dict]:
    src_name, tgt_name, metrics, select = EXPERIMENTS[args.experiment]
    baskets = tgt_name in BASKETS
    ks = (10,) if baskets else tuple(sorted({int(m.split("@")[1]) for m in (select, *metrics)}))
    t = time.time()
    source = prepare(src_name, enc, cache)
    target = prepare(tgt_name, enc, cache)
    prep = time.time() - t
    logger.info("prepared %s %s and %s %s in %.0fs", src_name, source.info, tgt_name, target.info, prep)
    model, src_meta = source_model(source, args)
    src_alone = evaluate(source, "adapter", model)
    text = evaluate(target, "text")
    pop = None if baskets else evaluate(target, "popularity")

    sizes = [float(s) for s in args.sizes.split(",")]
    results: dict[str, dict] = {}
    for size in sizes:
        task = recipes.subsample_outfits(target, size, args.seed) if baskets else domains.subsample(target, size, seed=args.seed)
        cfg = TransferConfig(method="auto", candidates=tuple(transfer_candidates(args)), select_metric=select, ks=ks,
                             feature_batch=args.feature_batch, l2sp_weight=args.l2sp_weight, weight_clip=args.weight_clip,
                             seed=args.seed,
                             train=train_config(len(task), args, seconds=args.budget_full if size == 1.0 else None))
        t = time.time()
        res = transfer(model, source.task, task, cfg)
        seconds = time.time() - t
        report_metrics = {name: evaluate(target, "adapter", m) for name, m in res.models.items()}
        report_metrics["auto"] = report_metrics[res.method_chosen]
        base = report_metrics["target-only"]
        results[f"{size:g}"] = {
            "target_examples": len(task), "seconds": round(seconds, 1), "chosen": res.method_chosen,
            "report": report_metrics,
            "gain": {n: safe_gain(m, base, metrics) for n, m in report_metrics.items() if n != "target-only"},
            "transfer_report": res.report,
        }
        logger.info("size %g (%d examples, %.0fs): chosen %s; %s", size, len(task), seconds, res.method_chosen,
                    res.report["summary"])
        if size == 1.0:  # the full-data guide, with its transfer report
            save_transferred(target, res, Path(args.out) / f"transfer-{args.experiment}",
                             {"trained_as": f"transfer:{res.method_chosen}", "source": src_name})

    sweep = {}
    if args.sweep_size is not None and args.sweep:
        task = (recipes.subsample_outfits(target, args.sweep_size, args.seed) if baskets
                else domains.subsample(target, args.sweep_size, seed=args.seed))
        for item in args.sweep.split(","):
            dist, alpha = item.split(":")
            cfg = TransferConfig(method="feature", feature_distance=dist, alpha=float(alpha), select_metric=select,
                                 ks=ks, feature_batch=args.feature_batch, seed=args.seed, train=train_config(len(task), args))
            t = time.time()
            res = transfer(model, source.task, task, cfg)
            m = evaluate(target, "adapter", res.model)
            base = results.get(f"{args.sweep_size:g}", {}).get("report", {}).get("target-only")
            sweep[item] = {"report": m, "valid": res.report["methods"][res.method_chosen]["valid"],
                           "item_distance": res.report["methods"][res.method_chosen]["item_distance"],
                           "gain": safe_gain(m, base, metrics) if base else None, "seconds": round(time.time() - t, 1)}
            logger.info("sweep %s: %s", item, sweep[item])

    out = {"experiment": args.experiment, "source": src_name, "target": tgt_name, "source_info": source.info,
           "target_info": target.info, "source_train": src_meta, "source_alone": src_alone, "text": text,
           "popularity": pop, "results": results, "sweep": sweep, "sweep_size": args.sweep_size,
           "candidates": transfer_candidates(args), "prep_seconds": prep}
    return render_transfer(out), out


def _mark(info: dict) -> str:
    """† = training never beat the starting weights on validation, so the starting weights were kept."""
    return "†" if str(info.get("note", "")).startswith("training never beat") else ""


def render_transfer(out: dict) -> str:
    """The markdown tables of one transfer experiment (from run_transfer's dict or its saved JSON)."""
    if "experiment" not in out:  # JSON written before these keys existed: rebuild them from its args
        saved = argparse.Namespace(**out["args"])
        out = {**out, "experiment": saved.experiment, "candidates": transfer_candidates(saved),
               "sweep_size": saved.sweep_size}
    src_name, tgt_name, results, sweep = out["source"], out["target"], out["results"], out["sweep"]
    metrics, select = EXPERIMENTS[out["experiment"]][2], EXPERIMENTS[out["experiment"]][3]
    reports = [r["transfer_report"] for r in out["results"].values()]
    select = reports[0].get("select_metric", select) if reports else select  # what the saved run selected on
    src_meta, src_alone, text, pop = out["source_train"], out["source_alone"], out["text"], out["popularity"]
    head = metrics[0]
    lines = [f"## {out['experiment']}: {src_name} -> {tgt_name}", "",
             f"Source {src_name}: {json.dumps(out['source_info'])}", "",
             f"Target {tgt_name}: {json.dumps(out['target_info'])}", "",
             f"Source model: {src_meta['seconds']:.0f}s training, {src_meta['steps']} steps"
             f"{' (reused from ' + src_meta['reused'] + ')' if 'reused' in src_meta else ''}; on its own report split "
             + ", ".join(f"{k} {v:.4f}" for k, v in src_alone.items()), "",
             f"Target baselines without training: text similarity (mean {'basket' if pop is None else 'history'}) "
             + ", ".join(f"{k} {text[k]:.4f}" for k in metrics)
             + ("" if pop is None else "; popularity " + ", ".join(f"{k} {pop[k]:.4f}" for k in metrics)), "",
             ("At 0 % target-only is the untrained adapter (the pooled basket through a random orthogonal "
              "projection: text similarity) and model:* is the source model with the target's slots starting as "
              "its unknown slot. " if pop is None else
              "At 0 % target-only is the untrained adapter (last item's text vector through a random orthogonal "
              "projection) and model:* is the source model applied as is. ")
             + "† = training never beat its starting weights on the selection split, so the starting weights "
             "(source model / untrained adapter) were kept.", ""]
    names = ["target-only", *out["candidates"], "auto"]

    def cell(s: str, n: str, m: str) -> str:
        methods = results[s]["transfer_report"]["methods"]
        info = methods.get(results[s]["chosen"] if n == "auto" else n, {})
        return f"{results[s]['report'][n][m]:.4f}{_mark(info)}" + (f" ({results[s]['chosen']})" if n == "auto" else "")

    for m in metrics[:2]:
        rows = [[n, *(cell(s, n, m) for s in results)] for n in names]
        lines += [f"### {m} on the report split, by target training size", "",
                  markdown_table(["method", *(f"{float(s):.0%} ({results[s]['target_examples']} ex.)" for s in results)],
                           rows), ""]
    for m in metrics[:2]:
        rows = [[n, *(fmt_gain(results[s]["gain"][n][m]) for s in results)] for n in names if n != "target-only"]
        lines += [f"### Transfer gain in {m} vs target-only (report split; relative)", "",
                  markdown_table(["method", *(f"{float(s):.0%}" for s in results)], rows), ""]
    rows = []
    for s, r in results.items():
        rep = r["transfer_report"]
        base = rep["methods"]["target-only"]["valid"][select]
        refused = ", ".join(f"{n} ({rep['methods'][n]['valid'][select]:.4f})" for n in rep["refused"]) or "none"
        rows.append([f"{float(s):.0%}", r["chosen"], f"{base:.4f}",
                     f"{rep['methods'][r['chosen']]['valid'][select]:.4f}", refused, f"{r['seconds']:.0f}"])
    lines += [f"### The guard (`auto`): choice on the selection split ({select})", "",
              markdown_table(["size", "chosen", "target-only valid", "chosen valid", "refused (valid)", "seconds"], rows), ""]
    rows = []
    for s, r in results.items():
        for n, info in r["transfer_report"]["methods"].items():
            if info.get("trained"):
                rows.append([f"{float(s):.0%}", n, str(info.get("steps")), str(info.get("best_step")),
                             f"{info.get('seconds', 0):.0f}"])
    lines += ["### Training runs (steps done, best step, seconds)", "",
              markdown_table(["size", "candidate", "steps", "best step", "seconds"], rows), ""]
    if sweep:
        rows = [[k, *(f"{v['report'][m]:.4f}" for m in metrics[:2]), fmt_gain((v["gain"] or {}).get(head)),
                 f"{v['valid'][select]:.4f}", f"{v['item_distance']['mmd']:.4f}", f"{v['item_distance']['coral']:.2e}",
                 f"{v['seconds']:.0f}"]
                for k, v in sweep.items()]
        lines += [f"### Feature-based alpha sweep at {out['sweep_size']:.0%} target data "
                  "(main-table alphas: MMD 1, CORAL 1e4)", "",
                  markdown_table(["distance:alpha", *metrics[:2], f"gain {head}", f"valid {select}", "item MMD after",
                            "item CORAL after", "seconds"], rows), ""]
    return "\n".join(lines)


def command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options that differ from their defaults)."""
    parts = ["python scripts/bench_transfer.py"]
    for dest, value in vars(args).items():
        if value == parser.get_default(dest):
            continue
        flag = "--" + dest.replace("_", "-")  # every option here is spelled as its dest
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def header(out: dict) -> str:
    saved = out["args"]
    return (f"# Transfer benchmark: {saved['experiment']}\n\n`{out['command']}` "
            f"(all other options at their defaults); {out.get('threads', saved['threads'])} torch thread(s), "
            f"2-core shared CPU; total {out['total_seconds']:.0f}s.\n\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True, choices=["baselines", *EXPERIMENTS])
    ap.add_argument("--render", metavar="JSON", help="only print the tables of a saved <experiment>.json")
    ap.add_argument("--sizes", default="0,0.01,0.1,1", help="target training fractions (of users)")
    ap.add_argument("--budget", type=float, default=18, help="seconds of training per candidate run")
    ap.add_argument("--budget-full", type=float, default=35, help="seconds per candidate run at 100%% target data")
    ap.add_argument("--source-budget", type=float, default=150, help="seconds of source training")
    ap.add_argument("--source-lr", type=float, default=3e-3, help="source training: lr (eval every 100 steps, "
                    "patience 8)")
    ap.add_argument("--source-steps", type=int, default=2000)
    ap.add_argument("--retrain-source", action="store_true", help="train the source model even if saved")
    ap.add_argument("--min-steps", type=int, default=60)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--patience", type=int, default=4, help="evaluations without improvement before stopping")
    ap.add_argument("--alpha-mmd", type=float, default=1.0, help="MMD alpha in the size runs")
    ap.add_argument("--alpha-coral", type=float, default=1e4, help="CORAL alpha in the size runs (CORAL of unit "
                    "vectors is ~1e-7: it needs a large alpha)")
    ap.add_argument("--l2sp-weight", type=float, default=0.01)
    ap.add_argument("--feature-batch", type=int, default=128, help="items / histories per domain for MMD, CORAL")
    ap.add_argument("--weight-clip", type=float, default=10.0)
    ap.add_argument("--sweep", default="mmd:0.1,mmd:10,coral:1e5",
                    help="distance:alpha pairs for the alpha sweep ('' to skip)")
    ap.add_argument("--sweep-size", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="indexes")
    ap.add_argument("--report", default="reports/transfer")
    args = ap.parse_args()
    if args.render:  # re-render the tables of a saved run (and rewrite its .md next to the JSON)
        path = Path(args.render)
        out = json.loads(path.read_text())
        out.setdefault("command", "python scripts/bench_transfer.py --experiment " + out["args"]["experiment"])
        if args.experiment == "baselines":
            raise SystemExit("--render works for transfer experiments only")
        text = header(out) + render_transfer(out)
        path.with_suffix(".md").write_text(text + "\n")
        print(text)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    enc, cache = load_encoder(), EmbeddingCache()
    if args.experiment == "baselines":
        text, out = run_baselines(args, enc, cache)
    else:
        text, out = run_transfer(args, enc, cache)
    total = time.time() - t0
    out["total_seconds"] = total
    out["args"] = vars(args)
    out["command"] = command(ap, args)
    out["threads"] = torch.get_num_threads()
    text = header(out) + text
    print(text)
    report_dir = Path(args.report)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"{args.experiment}.md").write_text(text + "\n")
    (report_dir / f"{args.experiment}.json").write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
