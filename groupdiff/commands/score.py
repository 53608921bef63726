"""``groupdiff score``: a samples ``.npz`` -> metrics JSON (FID/sFID/IS/P/R or the built-in fmnist metrics)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..metrics.score import ScoreConfig

    parser = sub.add_parser(
        "score", help="score a samples .npz: fid/sfid/is/precision/recall (inception) or *_fmnist (classifier)",
        description="One feature pass per space. 'inception' needs --reference (ADM reference batch) and "
        "--inception-weights (or $GROUPDIFF_INCEPTION_WEIGHTS); 'fmnist' needs --classifier-weights and uses "
        "the built-in test split as reference unless --reference is given.",
    )
    parser.add_argument("samples", help="samples .npz (arr_0 uint8 NHWC)")
    parser.add_argument("--out", default="", help="metrics JSON (default: metrics.json beside the samples)")
    parser.add_argument("--space", dest="spaces", action="append", choices=["inception", "fmnist"],
                        help="feature space (repeatable; default fmnist)")
    parser.add_argument("--reference", default="",
                        help="reference batch .npz (arr_0 and/or mu, sigma, mu_s, sigma_s), or a pixel dataset version "
                        "from `groupdiff ingest` (folder or s3://)")
    parser.add_argument("--inception-weights", default="", help="FID InceptionV3 weights file (path or file:// URI)")
    parser.add_argument("--classifier-weights", default="", help="built-in classifier .safetensors")
    defaults = {k: f.default for k, f in ScoreConfig.model_fields.items()}
    parser.add_argument("--reference-limit", type=int, default=defaults["fmnist_reference_limit"],
                        help="first N built-in test images form the reference (0 = all; the floor takes images after them)")
    parser.add_argument("--no-floor", action="store_true",
                        help="do not score the real-data floor (held-out real test images of the samples' size)")
    parser.add_argument("--fd-bootstrap", type=int, default=defaults["fd_bootstrap"],
                        help="resamples of the samples for the fd interval (0 = none)")
    parser.add_argument("--fd-interval", type=float, default=defaults["fd_interval"], help="coverage of the fd interval")
    parser.add_argument("--cache-dir", default="", help="cache for reference statistics")
    parser.add_argument("--pr-k", type=int, default=3)
    parser.add_argument("--is-splits", type=int, default=1)
    parser.add_argument("--fd-method", choices=["sqrtm", "eigh"], default="eigh",
                        help="Fréchet trace term: eigh (default: symmetric eigendecompositions, same value to "
                        "rounding, much faster) or sqrtm (scipy.linalg.sqrtm of S1 S2, the ADM evaluator's procedure)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def format_with_floor(result: dict) -> str:
    """Plain-text table: each metric of the samples beside the real-data floor's (if scored)."""
    metrics, floor = result["metrics"], result.get("floor") or {}
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  {'samples':>10}  {'real floor':>10}"]
    for key, value in metrics.items():
        other = f"{floor[key]:>10.4g}" if key in floor else f"{'':>10}"
        lines.append(f"{key:<{width}}  {value:>10.4g}  {other}")
    info = result.get("floor_info")
    if info:
        lines.append(f"real floor: {info['num_images']} held-out {info['source']} images "
                     f"(indices {info['first_index']}..{info['last_index']}, after the {info['reference_images']} reference images)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from ..metrics.score import ScoreConfig
    from ..metrics.score import run as run_score

    config = ScoreConfig(
        samples=args.samples, out=args.out, spaces=args.spaces or ["fmnist"], reference=args.reference,
        inception_weights=args.inception_weights, classifier_weights=args.classifier_weights,
        fmnist_reference_limit=args.reference_limit, cache_dir=args.cache_dir, pr_k=args.pr_k,
        is_splits=args.is_splits, fd_method=args.fd_method, batch_size=args.batch_size, device=args.device,
        real_floor=not args.no_floor, fd_bootstrap=args.fd_bootstrap, fd_interval=args.fd_interval,
    )
    result = run_score(config)
    print(json.dumps(result["metrics"], indent=2))
    print(format_with_floor(result))
    print(f"written {result['path']}")
    return 0
