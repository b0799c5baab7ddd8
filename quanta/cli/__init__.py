"""quanta: run components, start a local system, manage VMs.

    quanta up [--name NAME] [--hosts N]   the whole system locally, until Ctrl-C
    quanta context list|current|use|set|delete   where the CLI and SDK connect
    quanta frontend|scheduler|agent ...   one component (see --help of each)
    quanta scheduler shards               who owns each scheduler shard
    quanta vm create|get|list|watch|delete|start|stop|restart|resize|update
    quanta vm create-many -f FILE [--all-or-nothing] [--wait]   many VMs in one call; vm set get SET
    quanta vm create-many -f FILE --plan [--hold 60s]   where they would go; --from-plan PLAN creates them there
    quanta vm attach-disk|detach-disk VM DISK   persistent disks on a VM (vm create --nic net=web,ip=pool --disk d1)
    quanta network create|get|list|update|delete|watch [--shared]   networks (port group, subnet, address pool)
    quanta disk create|get|list|update|delete|watch   persistent disks that outlive their VMs
    quanta host list|get|maintenance|drain|delete
    quanta host orphans [HOST] | orphans adopt|destroy HOST UID
    quanta backup create|restore FILE     an etcd snapshot with its checksum; restore one
    quanta tenant|project create|get|list|delete
    quanta tenant update T --grant-backing PG --revoke-backing PG   port groups its networks may use (system admins)
    quanta quota get|set|list
    quanta flavor|image create|list|delete
    quanta token create|get|revoke|whoami|bootstrap
    quanta audit list|watch
    quanta completion bash|zsh|fish       a shell completion script
    quanta --version

Every command takes --help. Output: -o table|wide|json|yaml|name.
"""

from __future__ import annotations

import sys
from importlib import metadata

from quanta.cli.errors import guarded


def version() -> str:
    try:
        return metadata.version("quanta")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    with guarded():  # Ctrl-C and closed pipes anywhere; each command reports its own API errors
        _dispatch(argv[0], argv[1:])


def _dispatch(command: str, rest: list[str]) -> None:
    if command in ("--version", "version"):
        print(f"quanta {version()}")
    elif command == "completion":
        from quanta.cli.completion import SHELLS, script

        if len(rest) != 1 or rest[0] not in SHELLS:
            print(f"usage: quanta completion {{{','.join(SHELLS)}}}\n\n"
                  "  bash: source <(quanta completion bash)\n"
                  "  zsh:  quanta completion zsh > \"${fpath[1]}/_quanta\"\n"
                  "  fish: quanta completion fish > ~/.config/fish/completions/quanta.fish",
                  file=sys.stderr if rest[:1] not in (["-h"], ["--help"]) else sys.stdout)
            sys.exit(0 if rest[:1] in (["-h"], ["--help"]) else 2)
        sys.stdout.write(script(rest[0]))
    elif command == "scheduler" and rest[:1] == ["shards"]:
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
    elif command == "network":
        from quanta.cli.network import main as network

        network(rest)
    elif command == "disk":
        from quanta.cli.disk import main as disk

        disk(rest)
    else:
        from quanta.cli.admin import KINDS

        if command not in KINDS:
            print(f"quanta: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
            sys.exit(2)
        from quanta.cli.admin import main as admin

        admin(command, rest)
