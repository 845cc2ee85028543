"""The ``textguide`` command line: one subcommand per public function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from .backends import BACKENDS
from .catalog import ColumnMap

logger = logging.getLogger("textguide")


def _columns(args: argparse.Namespace) -> ColumnMap:
    def opt(v: str | None) -> str | None:
        return None if v in ("", "none", "-") else v

    return ColumnMap(
        id=args.id_column,
        title=args.title_column,
        description=opt(args.description_column),
        category=opt(args.category_column),
        brand=opt(args.brand_column),
        price=opt(args.price_column),
        extra=tuple(args.extra_column or ()),
    )


def _add_catalog_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("catalog columns")
    g.add_argument("--id-column", default="id")
    g.add_argument("--title-column", default="title")
    g.add_argument("--description-column", default="description", help="'none' if absent")
    g.add_argument("--category-column", default="category", help="'none' if absent")
    g.add_argument("--brand-column", default="brand", help="'none' if absent")
    g.add_argument("--price-column", default="price", help="'none' if absent")
    g.add_argument("--extra-column", action="append", help="extra metadata column to keep (repeatable)")
    g.add_argument("--template", help="text template, e.g. '{title}. {brand}. {description}'")
    g.add_argument("--strict", action="store_true", help="an empty title is an error instead of a skipped row")
    g.add_argument("--on-duplicate", choices=["error", "last"], default="error")


def _print_hits(query: str, hits: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"query": query, "ids": hits.ids, "scores": [round(float(s), 5) for s in hits.scores],
                          "items": hits.items}, ensure_ascii=False, default=str))
        return
    print(f"\n{query}")
    for rank, (item, score) in enumerate(zip(hits.items, hits.scores), 1):
        cat = item.get("category") or ""
        print(f"  {rank:>2}. {score:6.3f}  {item['id']:<16} {str(item.get('title', ''))[:70]:<70} {cat}")


def cmd_build_index(args: argparse.Namespace) -> int:
    from .guide import build_index

    if args.engine == "ray":
        from .distributed import build_index_ray

        try:
            manifest = build_index_ray(
                args.catalog, args.output, columns=_columns(args), template=args.template, encoder=args.encoder,
                precision=args.precision, backend=args.backend, factory=args.factory, cache_dir=args.cache_dir,
                use_cache=not args.no_cache, strict=args.strict, on_duplicate=args.on_duplicate, shards=args.shards,
                actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_rows=args.batch_rows or 1024,
                batch_size=args.batch_size, address=args.address, force=args.force)
        except ImportError as e:
            print(f"textguide: error: {e}", file=sys.stderr)
            return 2
        print(f"built {args.output}: {manifest['counts']['items']} items, encoder {manifest['encoder']['name']} "
              f"({manifest['encoder']['dim']}-d), {len(manifest['index']['shards'])} shards "
              f"({manifest['index']['factory']}) on Ray")
        return 0
    if args.stream or args.engine == "stream":
        from .stream import build_index_streaming

        manifest = build_index_streaming(
            args.catalog, args.output, columns=_columns(args), template=args.template, encoder=args.encoder,
            backend=args.backend, factory=args.factory, cache_dir=args.cache_dir, use_cache=not args.no_cache,
            strict=args.strict, batch_rows=args.batch_rows or 50_000, batch_size=args.batch_size, force=args.force)
        print(f"built {args.output}: {manifest['counts']['items']} items, encoder {manifest['encoder']['name']} "
              f"({manifest['encoder']['dim']}-d), index {manifest['index']['factory']} (streamed)")
        return 0
    guide = build_index(
        args.catalog, args.output, columns=_columns(args), template=args.template, encoder=args.encoder,
        precision=args.precision, backend=args.backend, factory=args.factory, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        strict=args.strict, on_duplicate=args.on_duplicate, batch_size=args.batch_size, show_progress=True,
        force=args.force,
    )
    info = guide.info()
    print(f"built {args.output}: {info['items']} items, encoder {info['encoder']['name']} "
          f"({info['encoder']['dim']}-d), index {info['index']['factory']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .guide import Guide

    guide = Guide.load(args.guide)
    for q, hits in zip(args.query, guide.search(list(args.query), k=args.k, category=args.category)):
        _print_hits(q, hits, args.json)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from .guide import Guide

    guide = Guide.load(args.guide)
    for i, hits in zip(args.item_id, guide.similar(list(args.item_id), k=args.k, category=args.category)):
        title = guide.index.item(i).get("title", "")
        _print_hits(f"similar to {i} ({title})", hits, args.json)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .guide import Guide

    print(json.dumps(Guide.load(args.guide).info(), indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_onboard(args: argparse.Namespace) -> int:
    from .encoder import EmbeddingCache
    from .guide import Guide

    if args.nice:  # background work: processes serving this guide keep their query latency
        os.nice(args.nice)
    guide = Guide.load(args.guide)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir)
    report = guide.onboard(args.catalog, category=args.category, replace=args.replace, columns=_columns(args),
                           template=args.template, cache=cache, batch_size=args.batch_size, precision=args.precision,
                           backend=args.backend, show_progress=True)
    print(f"onboarded into {args.guide}: {report.added} added, {report.replaced} replaced, "
          f"{report.unchanged} unchanged; {report.items} items now ({report.seconds:.1f}s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .privacy import describe, dp_from_args
    from .bench.workflows import train_recipe

    dp = dp_from_args(args)  # None without --dp-epsilon
    per_task = args.max_seconds if args.max_seconds is not None or dp else 600  # DP: fixed steps, no time budget
    n_tasks = len(_recipe_tasks(args.recipe))
    cv = args.recipe in ("polyvore", "all") and args.outfit_folds >= 2
    challenge = args.single_task_challengers and dp is None and (n_tasks > 1 or cv)
    single = per_task / 2 if per_task is not None and challenge else None
    # half of each task's budget trains the shared model (or polyvore's adapter), half its challenger (outfits:
    # the recipe trained on train + validation outfits, checked by cross-validation)
    seconds = (per_task - (single or 0)) * n_tasks if per_task is not None else None
    report = train_recipe(args.recipe, args.output, sharing=args.sharing, weighting=args.weighting,
                          steps=args.steps, max_seconds=seconds, single_seconds=single, seed=args.seed,
                          checkpoint_dir=args.checkpoint_dir, resume=args.resume, dp=dp,
                          outfit_folds=args.outfit_folds, refit=args.refit)
    print(report["markdown"] + (f"\n{describe(report['privacy'])}" if dp else ""))
    return 0


def _recipe_tasks(recipe: str) -> tuple[str, ...]:
    """The tasks a recipe trains (``all``: the three); unknown names are left to ``train_recipe`` to reject."""
    from .bench.workflows import RECIPE_TASK

    return tuple(RECIPE_TASK.values()) if recipe == "all" else (recipe,)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .bench.workflows import evaluate_recipe

    report = evaluate_recipe(args.recipe, args.guide, report_dir=args.report_dir)
    print(report["markdown"])
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from .bench.workflows import transfer_domains

    out = transfer_domains(args.source, args.target, args.output, method=args.method,
                           target_fraction=args.target_fraction, source_seconds=args.source_seconds,
                           seconds=args.max_seconds, seed=args.seed)
    print(out["summary"] or f"chosen: {out['chosen']}")
    print(f"saved {out['path']} (report: {out['path']}/reports/transfer.json)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve import ServeConfig, create_app, http_protocol, read_token
    except ImportError as e:
        print(f"textguide: error: {e}; install the serve extra: pip install -e \".[serve]\"", file=sys.stderr)
        return 2
    config = ServeConfig(max_body_bytes=int(args.max_body_mb * 2**20), refresh_seconds=args.refresh_seconds)
    app = create_app(args.guide, read_token(args.token_file), config=config)
    import gc

    gc.collect()
    gc.freeze()  # the libraries and models loaded so far live as long as the server: keep them out of GC passes
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                http=http_protocol())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="textguide", description="Text-driven shopping guidance.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO (progress bars, reports)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-index", help="embed a catalog and write a guide directory")
    p.add_argument("catalog", help="CSV, TSV, JSONL or Parquet file (optionally .gz), or a datasets save_to_disk folder")
    p.add_argument("output", help="guide directory to write (replaced atomically)")
    p.add_argument("--encoder", default=None,
                   help="minilm (default, packaged), use-multilingual, hashing:DIM, or a local sentence-transformers path")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="runtime of a sentence-transformers encoder: auto (default: openvino when installed, else "
                        "torch), torch, onnx, onnx-int8, openvino, openvino-int8 (exported once from the local "
                        "weights, cached; see docs/benchmarks.md section 4)")
    p.add_argument("--factory", default=None, help="FAISS factory string (default: Flat, or HNSW32,Flat above 50k items)")
    p.add_argument("--cache-dir", default=None, help="embedding cache directory (default ~/.cache/textguide)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--force", action="store_true",
                   help="write into a directory that is not a guide: its contents are moved aside to "
                        "OUTPUT.replaced-<time>, never deleted")
    p.add_argument("--stream", action="store_true",
                   help="out of core: read the catalog in Arrow batches (datasets) instead of loading it whole")
    p.add_argument("--batch-rows", type=int, default=None,
                   help="rows per streamed batch (--stream, default 50000) or per embedding-actor call (--engine ray, "
                        "default 1024)")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "stream", "ray"], default="local",
                   help="local (default: one process), stream (= --stream) or ray (distributed: Ray Data reads the "
                        "catalog in blocks, an actor pool embeds it, one FAISS index per shard; needs the ray extra)")
    g.add_argument("--address", default=None,
                   help="with --engine ray: the Ray cluster (auto, ray://host:port); default: a running session, "
                        "else a local Ray started for this build")
    g.add_argument("--shards", type=int, default=None,
                   help="with --engine ray: index shards (default one per million rows)")
    g.add_argument("--actors", type=int, default=1, help="with --engine ray: embedding actors (one encoder each)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="with --engine ray: CPUs each embedding actor asks Ray for (its torch threads)")
    _add_catalog_args(p)
    p.set_defaults(func=cmd_build_index)

    p = sub.add_parser("search", help="free-text search")
    p.add_argument("guide")
    p.add_argument("query", nargs="+")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--category")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", help="items similar to given item ids")
    p.add_argument("guide")
    p.add_argument("item_id", nargs="+")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--category")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("onboard", help="add a new category's products to a live guide (no retraining)")
    p.add_argument("guide")
    p.add_argument("catalog")
    p.add_argument("--category", help="category of every new item")
    p.add_argument("--replace", action="store_true", help="replace items whose id exists with another text")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default 64)")
    p.add_argument("--nice", type=int, default=19, metavar="N",
                   help="lower this process's CPU priority by N first, so that processes serving the guide keep "
                        "their query latency (default 19, the lowest priority; 0 keeps it)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="embed the new items in this precision (bf16: ~1.6x faster on AMX CPUs; default: the guide's)")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="embed the new items on this runtime (default: the guide's)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-cache", action="store_true")
    _add_catalog_args(p)
    p.set_defaults(func=cmd_onboard)

    recipes_help = "amazon-scientific, polyvore, completejourney, or all (one multi-task model, three guides)"
    p = sub.add_parser("train", help="build a guide from a benchmark dataset in ../shared/data and train adapters")
    p.add_argument("recipe", help=recipes_help)
    p.add_argument("output", help="guide directory (for 'all': a parent directory of the three guides)")
    p.add_argument("--sharing", choices=["hard", "soft", "experts"], default="hard")
    p.add_argument("--weighting", choices=["static", "uncertainty", "gradnorm", "dwa"], default="dwa",
                   help="loss weighting (default dwa: validated best with hard sharing, docs/results.md)")
    p.add_argument("--steps", type=int, default=20000, help="step cap (default 20000: the time budget and early "
                   "stopping end training first)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="training time budget per task (default 600; 'all' gives half of it to the shared model, "
                        "3 x 300 s, and half to each task's single-task challenger); not with --dp-epsilon, which "
                        "trains exactly --steps")
    p.add_argument("--no-single-task-challengers", dest="single_task_challengers", action="store_false",
                   help="'all': train only the shared multi-task model (for its whole budget) and serve it for "
                        "every task; by default each task also trains its own adapter and serves whichever "
                        "validates better ('polyvore': no cross-validated outfit challenger either)")
    p.add_argument("--refit", action="store_true",
                   help="amazon-scientific / all: train the served single-task recommendation adapter once more on "
                        "the training examples plus every user's validation item, for the epochs that validated "
                        "best (about doubles recommendation's training time; its report metrics stay the first "
                        "run's, since the report users' items are in its data)")
    p.add_argument("--outfit-folds", type=int, default=5,
                   help="polyvore / all: the outfit challenger trains on train + validation outfits, its recipe "
                        "checked by this many folds of cross-validation, and is served when it validates better "
                        "(0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    g = p.add_argument_group("differential privacy (needs the privacy extra; see docs/privacy.md)")
    g.add_argument("--dp-epsilon", type=float, default=None,
                   help="train with DP-SGD to this epsilon per user (amazon-scientific, completejourney)")
    g.add_argument("--dp-delta", type=float, default=None, help="delta (default 1/(10 x training users))")
    g.add_argument("--dp-max-grad-norm", type=float, default=1.0, help="per-example gradient clipping norm")
    g.add_argument("--dp-accountant", choices=["rdp", "prv"], default="rdp", help="Opacus privacy accountant")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained guide on its dataset's protocol (JSON + Markdown report)")
    p.add_argument("recipe", help=recipes_help)
    p.add_argument("guide")
    p.add_argument("--report-dir", default=None,
                   help="where to write report.json / report.md (default GUIDE/reports/evaluate/)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transfer", help="transfer an adapter between domains (negative-transfer guard)")
    domains_help = ("recommendation: hm, online-retail, industrial, office; basket complements: hm-baskets, "
                    "or-baskets (source and target of the same kind)")
    p.add_argument("--source", required=True, help=domains_help)
    p.add_argument("--target", required=True, help=domains_help)
    p.add_argument("--method", choices=["auto", "target-only", "model", "feature", "instance"], default="auto")
    p.add_argument("--target-fraction", type=float, default=1.0, help="share of target training data (0 = zero-shot)")
    p.add_argument("--source-seconds", type=float, default=300)
    p.add_argument("--max-seconds", type=float, default=120, help="budget per transfer candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("output", help="target guide directory to write")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("serve", help="serve guides over HTTP (JSON API + a page at /); needs the serve extra")
    p.add_argument("guide", nargs="+", help="guide directories, served by their directory name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None,
                   help="file holding the bearer token for writes (default: $TEXTGUIDE_TOKEN; neither: writes disabled)")
    p.add_argument("--max-body-mb", type=float, default=32, help="largest request body, e.g. a catalog upload (413 above)")
    p.add_argument("--refresh-seconds", type=float, default=1.0,
                   help="how often to pick up changes other processes made to the guide directories (0: never)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="what a guide directory holds")
    p.add_argument("guide")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textguide`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError) as e:  # user errors (ArtifactError is a ValueError): one line, status 2
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"textguide: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
