"""``groupdiff ingest SRC --name NAME``: an image folder (or a tar of class folders) -> a dataset version.

Runs the ``ingest`` flow (:mod:`flows.ingest`) in this process. Where the version goes: the records of the
environment when it names an object store (``$GROUPDIFF_STORE_ROOT``, e.g. the local stack's ``stack.env``), else
the embedded records under ``--out``, the ones ``groupdiff run --out`` uses (``--embedded`` forces them). Train on
it with ``groupdiff run --set pipeline.dataset=NAME`` or the pipeline deployment's ``dataset`` parameter.
"""
from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    from groupdiff.data.config import IngestConfig

    fields = IngestConfig.model_fields
    parser = sub.add_parser(
        "ingest", help="an image folder or tar of class folders -> a dataset version (object store + catalogue)",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("src", help="image folder SRC/<class>/<image>, or a tar of class folders")
    parser.add_argument("--name", required=True, help="dataset name (versions are numbered per name)")
    parser.add_argument("--encode", choices=["pixels", "latents"], default=fields["encode"].default,
                        help=fields["encode"].description)
    parser.add_argument("--vae", default="", help="SD-VAE weights for --encode latents (local path or s3:// URI)")
    parser.add_argument("--on-corrupt", choices=["skip", "fail"], default=fields["on_corrupt"].default,
                        help=fields["on_corrupt"].description)
    parser.add_argument("--image-size", type=int, default=fields["image_size"].default,
                        help=fields["image_size"].description)
    parser.add_argument("--shard-size", type=int, default=fields["shard_size"].default,
                        help=fields["shard_size"].description)
    parser.add_argument("--out", default="outputs", help="local folder: work files (and the embedded records)")
    parser.add_argument("--embedded", action="store_true",
                        help="use the embedded records under --out even when the environment names a store")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.params import IngestParams

    params = IngestParams(src=args.src, name=args.name, encode=args.encode, vae=args.vae, on_corrupt=args.on_corrupt,
                          image_size=args.image_size, shard_size=args.shard_size)  # a bad value: exit 2, nothing written
    from flows.ingest import ingest
    from flows.records import ENV_STORE, RecordsConfig

    if args.embedded or not os.environ.get(ENV_STORE):
        from flows.embedded import embedded_records

        records = embedded_records(args.out)
    else:
        records = RecordsConfig.from_env(out=args.out)
    result = ingest(params=params, records=records)
    state = "new version" if result["created"] else "identical content: the existing version, nothing new"
    print(f"{result['spec']} ({state}): {sum(result['counts'].values())} images in {len(result['counts'])} classes, "
          f"{len(result['corrupt'])} corrupt files left out{': ' + ', '.join(result['corrupt']) if result['corrupt'] else ''}")
    print(json.dumps({k: result[k] for k in ("name", "version", "uri", "digest", "created", "counts", "corrupt")}))
    return 0
