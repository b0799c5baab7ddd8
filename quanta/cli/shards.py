"""``quanta scheduler shards``: who owns each scheduler shard, and how much waits in it.

Reads etcd directly (shard ownership is not part of the public API): the
endpoint comes from --etcd, $QUANTA_ETCD or the ``quanta up`` system behind the
context in use ($QUANTA_CONTEXT or the current one; else the default system's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from controlplane.etcd import EtcdClient
from controlplane.store.cluster import read_cluster_config
from controlplane.store.keys import Keys
from controlplane.store.shards import ShardDirectory
from quanta.cli.errors import guarded
from quanta.cli.output import Column, Printer, plural, table_of
from quanta.config import default_etcd


async def _read(etcd: str, root: str) -> dict:
    keys = Keys(root)
    async with EtcdClient(etcd, timeout=5.0) as client:
        cluster = await read_cluster_config(client, keys)
        count = cluster.shards if cluster else 0
        directory = ShardDirectory(client, keys)
        table = await directory.snapshot()
        depths = await directory.queue_depths(count)
    now = time.time_ns()
    shards = []
    for shard in range(count):
        holder = table.owners.get(shard)
        shards.append({
            "shard": shard,
            "owner": holder.owner if holder else "",
            "member": holder.member if holder else "",
            "held_seconds": round((now - holder.acquire_time_ns) / 1e9, 1) if holder else 0,
            "queued": depths[shard],
        })
    members = [{"member": m, "name": n, "shards": sum(1 for s in shards if s["member"] == m)}
               for m, n in sorted(table.members.items(), key=lambda kv: kv[1])]
    return {"shards": shards, "schedulers": members, "revision": table.revision}


_COLUMNS = (
    Column("SHARD", lambda s: str(s["shard"])),
    Column("OWNER", lambda s: s["owner"] or "(none)"),
    Column("HELD", lambda s: f"{s['held_seconds']:.0f}s" if s["owner"] else "-"),
    Column("QUEUED", lambda s: str(s["queued"])),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta scheduler shards", description=__doc__)
    parser.add_argument("--etcd", default=default_etcd(), help="etcd endpoints (default: $QUANTA_ETCD or quanta up's)")
    parser.add_argument("--root", default=os.environ.get("QUANTA_ROOT", "/quanta"), help="etcd key prefix")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    with guarded(lambda: args.etcd):
        state = asyncio.run(_read(args.etcd, args.root))
        if args.output == "json":
            print(json.dumps(state, indent=2))
            return
        printer = Printer()
        printer.render(table_of(_COLUMNS, state["shards"]))
        names = ", ".join(f"{m['name']} ({m['shards']})" for m in state["schedulers"]) or "none"
        printer.text(f"\n{plural(len(state['schedulers']), 'scheduler process', 'scheduler processes')}: {names}")
