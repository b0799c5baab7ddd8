"""quanta: run components, start a local system, manage VMs.

    quanta up [--name NAME] [--hosts N]   the whole system locally, until Ctrl-C
    quanta context list|current|use|set|delete   where the CLI and SDK connect
    quanta frontend|scheduler|agent ...   one component (see --help of each)
    quanta scheduler shards               who owns each scheduler shard
    quanta vm create|get|list|watch|delete
    quanta host list|get|maintenance|drain|delete
    quanta host orphans [HOST] | orphans adopt|destroy HOST UID
    quanta backup create|restore FILE     an etcd snapshot with its checksum; restore one
    quanta tenant|project create|get|list|delete
    quanta quota get|set|list
    quanta flavor|image create|list|delete
    quanta token create|get|revoke|whoami|bootstrap
    quanta audit list|watch
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "scheduler" and rest[:1] == ["shards"]:
        from quanta.cli.shards import main as shards

        shards(rest[1:])
    elif command == "frontend":
        from controlplane.frontend import main as frontend

        frontend(rest)
    elif command == "scheduler":
        from scheduler.__main__ import main as scheduler

        scheduler(rest)
    elif command == "agent":
        from agents.__main__ import main as agent

        agent(rest)
    elif command == "up":
        from quanta.cli.up import main as up

        up(rest)
    elif command == "context":
        from quanta.cli.context import main as context

        context(rest)
    elif command == "backup":
        from quanta.cli.backup import main as backup

        backup(rest)
    elif command in ("vm", "host"):
        from quanta.cli.resources import main as resources

        resources(command, rest)
    elif command in ("tenant", "project", "quota", "flavor", "image", "token", "audit"):
        from quanta.cli.admin import main as admin

        admin(command, rest)
    else:
        print(f"quanta: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
        sys.exit(2)
