"""``quanta backup create|restore FILE``: the store's backups (see docs/backup.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from quanta.backup import BackupError, checksum_path, create_backup, restore_backup
from quanta.config import default_etcd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta backup", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    create = sub.add_parser("create", help="snapshot etcd into FILE, with its sha256 in FILE.sha256")
    create.add_argument("file", help="where to write the snapshot")
    create.add_argument("--etcd", default=None,
                        help="etcd endpoint(s), comma separated (default: $QUANTA_ETCD, else the etcd of the "
                             "`quanta up` system behind the context in use)")
    restore = sub.add_parser("restore", help="check FILE against FILE.sha256 and restore it into a new data dir")
    restore.add_argument("file", help="a snapshot made by `quanta backup create`")
    restore.add_argument("--data-dir", required=True, help="the new member's data dir (must not exist or be empty)")
    restore.add_argument("--name", default="default", help="the member's name (etcd --name)")
    restore.add_argument("--initial-cluster", default="",
                         help="etcd --initial-cluster of the restored cluster (default: this one member)")
    restore.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380",
                         help="the member's peer URL (etcd --initial-advertise-peer-urls)")
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "create":
            backup = asyncio.run(create_backup(args.etcd or default_etcd(), args.file))
            print(f"{backup.sha256}  {backup.path}  ({backup.size} bytes; checksum in {checksum_path(backup.path)})")
        else:
            restore_backup(args.file, args.data_dir, name=args.name, initial_cluster=args.initial_cluster,
                           initial_advertise_peer_urls=args.initial_advertise_peer_urls)
            print(f"restored {args.file} into {args.data_dir}; start etcd on it, then the rest of Quanta "
                  "(docs/backup.md)")
    except BackupError as err:
        print(f"quanta backup: {err}", file=sys.stderr)
        sys.exit(1)
