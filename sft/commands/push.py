"""`sft push OUTPUT_DIR --repo-id OWNER/NAME` (or `--to-dir DIR` to see exactly what would be uploaded)."""

from __future__ import annotations


ORDER = 10  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload an output dir (adapter/model, card, metrics) to a model hub")
    p.add_argument("output_dir")
    p.add_argument("--repo-id", required=False, default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--to-dir", default=None, help="write exactly what would be uploaded into this directory")


def run(args) -> int:
    from ..publish import push

    files, where = push(args.output_dir, repo_id=args.repo_id, private=args.private, revision=args.revision,
                        to_dir=args.to_dir)
    if args.to_dir:
        print(f"[sft] wrote {len(files)} files to {where}: {', '.join(files)}")
    else:
        print(f"[sft] pushed {len(files)} files to {where}")
    return 0
