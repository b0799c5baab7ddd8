"""quanta: run components, start a local system, manage VMs.

    quanta up [--hosts N]                 the whole system locally, until Ctrl-C
    quanta frontend|scheduler|agent ...   one component (see --help of each)
    quanta scheduler shards               who owns each scheduler shard
    quanta vm create|get|list|watch|delete
    quanta host list|get|maintenance|drain|delete
    quanta tenant|project create|get|list|delete
    quanta quota get|set|list
    quanta flavor|image create|list|delete
    quanta token create|get|revoke|whoami|bootstrap
    quanta audit list|watch
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    # Components run in their own module (and process); exec keeps the layering:
    # the control plane never imports the scheduler or the agents.
    components = {"frontend": "controlplane.frontend", "scheduler": "scheduler", "agent": "agents"}
    if command == "scheduler" and rest[:1] == ["shards"]:
        from controlplane.cli.shards import main as shards

        shards(rest[1:])
    elif command in components:
        os.execv(sys.executable, [sys.executable, "-m", components[command], *rest])
    elif command == "up":
        from controlplane.cli.up import main as up

        up(rest)
    elif command in ("vm", "host"):
        from controlplane.cli.resources import main as resources

        resources(command, rest)
    elif command in ("tenant", "project", "quota", "flavor", "image", "token", "audit"):
        from controlplane.cli.admin import main as admin

        admin(command, rest)
    else:
        print(f"quanta: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
        sys.exit(2)
