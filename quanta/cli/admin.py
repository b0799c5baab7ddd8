"""``quanta tenant|project|quota|flavor|image|token|audit ...``: tenancy, catalog,
tokens and the audit log from the command line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from controlplane.gen.quanta.v1 import common_pb2
from controlplane.tenancy import DIMENSIONS
from quanta.cli import views
from quanta.cli.errors import guarded
from quanta.cli.output import Printer
from quanta.cli.resources import common_options, run_with_client, verb_maker
from quanta.client import ROLES, Client
from quanta.errors import Aborted

KINDS = ("tenant", "project", "quota", "flavor", "image", "token", "audit")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def _limits(text: str) -> dict[str, int | None]:
    """``"vms=10,vcpus=8,memory_mib=unlimited"`` → ``{"vms": 10, "vcpus": 8, "memory_mib": None}``."""
    limits: dict[str, int | None] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in DIMENSIONS or not value:
            raise argparse.ArgumentTypeError(f"expected {'|'.join(DIMENSIONS)}=N or =unlimited, got {item!r}")
        limits[key] = None if value == "unlimited" else int(value)
    return limits


def _duration(text: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 3600, 30m, 12h or 7d, got {text!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _grant(text: str) -> tuple[str, str, str]:
    """``role[:tenant[/project]]``, e.g. ``project-member:acme/web``."""
    role, _, scope = text.partition(":")
    if role not in ROLES:
        raise argparse.ArgumentTypeError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    tenant, _, project = scope.partition("/")
    return role, tenant, project


def _quota_name(text: str) -> str:
    """``acme`` → the tenant's ticket; ``acme/web`` → the project's quota."""
    tenant, _, project = text.partition("/")
    return f"tenants/{tenant}/projects/{project}/quota" if project else f"tenants/{tenant}/quota"


def _update_tenant(client: Client, args) -> object:
    """``quanta tenant update``: the grants read, changed and written with their etag
    (read again if the tenant changed meanwhile), so concurrent grants are not lost."""
    if args.display_name is None and not (args.grant_backing or args.revoke_backing):
        raise SystemExit("quanta tenant update: nothing to change (--display-name, --grant-backing, "
                         "--revoke-backing)")
    for _attempt in range(5):
        tenant = client.get_tenant(args.id)
        backings = None
        if args.grant_backing or args.revoke_backing:
            kept = [b for b in tenant.network_backings if b not in args.revoke_backing]
            backings = kept + [b for b in dict.fromkeys(args.grant_backing) if b not in kept]
        try:
            return client.update_tenant(args.id, display_name=args.display_name, network_backings=backings,
                                        etag=tenant.etag)
        except Aborted:
            continue
    raise SystemExit(f"quanta tenant update: tenants/{args.id} kept changing; try again")


def fill_parser(kind: str, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the verbs of ``quanta KIND`` to ``parser``, which was made with
    ``parents=[common_options(False)]`` (here, or in the completion scripts' tree)."""
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    ids = {"tenant": "TENANT", "project": "PROJECT", "quota": "TENANT[/PROJECT]", "flavor": "FLAVOR",
           "image": "IMAGE", "token": "TOKEN"}
    verb = verb_maker(sub, [common_options(True)], "id", ids.get(kind, kind.upper()), f"the {kind}'s id" + (
        " (a tenant's ticket) or TENANT/PROJECT (a project's quota)" if kind == "quota" else ""))

    if kind in ("tenant", "project"):
        create = verb("create", f"create a {kind}")
        create.add_argument("--display-name", default="", help="a human-readable name")
        create.add_argument("--quota", type=_limits, default={},
                            help="limits, e.g. vms=10,vcpus=8,memory_mib=16384,disk_gib=200 (default unlimited)")
        if kind == "tenant":
            create.add_argument("--backing", action="append", default=[], metavar="PORT_GROUP",
                                help="grant a network backing (port group) its networks may map to; repeatable "
                                "(system admins)")
            update = verb("update", "rename a tenant, or grant and revoke network backings (system admins)")
            update.add_argument("--display-name", default=None, help="a human-readable name")
            update.add_argument("--grant-backing", action="append", default=[], metavar="PORT_GROUP",
                                help="grant a backing (port group) to the tenant's networks; repeatable")
            update.add_argument("--revoke-backing", action="append", default=[], metavar="PORT_GROUP",
                                help="revoke a backing; refused while one of the tenant's networks is on it; "
                                "repeatable")
        verb("get", f"show a {kind}")
        verb("list", f"list {kind}s", named=False)
        delete = verb("delete", f"delete a {kind} (refused while it holds VMs, unless --force)")
        delete.add_argument("--force", action="store_true",
                            help="delete its VMs first (a project takes no new VMs from then on; run again to "
                            "finish a deletion cut short)")
    elif kind == "quota":
        verb("get", "show a quota: TENANT (its ticket) or TENANT/PROJECT")
        setter = verb("set", "change limits: quanta quota set acme/web vms=20,vcpus=unlimited")
        setter.add_argument("limits", type=_limits, metavar="LIMITS",
                            help="DIMENSION=N or =unlimited, comma separated; dimensions: " + ", ".join(DIMENSIONS))
        verb("list", "the quotas of --tenant's projects", named=False)
    elif kind == "flavor":
        create = verb("create", "create a flavor (public, or --private to --tenant)")
        create.add_argument("--vcpus", type=int, required=True, help="virtual CPUs")
        create.add_argument("--memory-mib", type=int, required=True, help="memory in MiB")
        create.add_argument("--disk-gib", type=int, required=True, help="disk in GiB")
        create.add_argument("--private", action="store_true", help="only for --tenant")
        verb("list", "flavors --tenant may use", named=False)
        verb("delete", "delete a flavor by name (flavors/F or tenants/T/flavors/F)")
    elif kind == "image":
        create = verb("create", "register an image")
        create.add_argument("--source", required=True, help="what drivers clone from, e.g. a template VM path")
        create.add_argument("--os", default="", help="its operating system, e.g. ubuntu-24.04")
        create.add_argument("--size-gib", type=int, default=0, help="its disk size in GiB")
        verb("list", "list images", named=False)
        verb("delete", "delete an image")
    elif kind == "token":
        create = verb("create", "issue a token (printed once)", named=False)
        create.add_argument("--subject", required=True, help="who it stands for, e.g. ci@acme")
        create.add_argument("--grant", type=_grant, action="append", required=True,
                            help="role[:tenant[/project]], repeatable, e.g. project-member:acme/web")
        create.add_argument("--ttl", type=_duration, default=24 * 3600, help="e.g. 12h, 30d (default 24h)")
        verb("get", "show a token's record")
        verb("revoke", "revoke a token everywhere")
        verb("whoami", "the caller's own token", named=False)
        boot = sub.add_parser("bootstrap", help="mint a system-admin token straight from etcd (operators)")
        boot.add_argument("--etcd", required=True, help="etcd endpoint(s), comma separated")
        boot.add_argument("--root", default="/quanta", help="Quanta's etcd key prefix (default /quanta)")
        boot.add_argument("--subject", default="admin", help="who the token stands for (default admin)")
        boot.add_argument("--ttl", type=_duration, default=30 * 86400, help="e.g. 12h, 30d (default 30d)")
    elif kind == "audit":
        listing = verb("list", "audit records, oldest first (--tenant's; --all for everything)", named=False)
        watching = verb("watch", "stream new audit records until Ctrl-C", named=False)
        for p in (listing, watching):
            p.add_argument("--all", action="store_true", help="every tenant's and the system's records")
    return parser


def main(kind: str, argv: list[str]) -> None:
    parser = fill_parser(kind, argparse.ArgumentParser(prog=f"quanta {kind}", parents=[common_options(False)]))
    args = parser.parse_args(argv)
    if kind == "token" and args.verb == "bootstrap":
        from controlplane.auth.bootstrap import bootstrap_admin_token

        with guarded(lambda: args.etcd):
            print(asyncio.run(bootstrap_admin_token(args.etcd, args.root, subject=args.subject, ttl_s=args.ttl)))
        return
    run_with_client(args, lambda client, printer: _run(kind, args, client, printer))


def _run(kind: str, args, client: Client, printer: Printer) -> None:  # noqa: C901 - one dispatch table, flat
    verb = args.verb
    view = {"tenant": views.TENANT, "project": views.PROJECT, "quota": views.QUOTA, "flavor": views.FLAVOR,
            "image": views.IMAGE, "token": views.TOKEN, "audit": views.AUDIT}[kind]

    def show(message) -> None:
        printer.one(message, view)

    if kind == "tenant":
        if verb == "create":
            show(client.create_tenant(args.id, display_name=args.display_name,
                                      quota={k: v for k, v in args.quota.items() if v is not None},
                                      network_backings=args.backing))
        elif verb == "update":
            show(_update_tenant(client, args))
        elif verb == "get":
            printer.detail(client.get_tenant(args.id), view)
        elif verb == "list":
            printer.many(client.list_tenants(), view)
        else:
            show(client.delete_tenant(args.id, force=args.force))
    elif kind == "project":
        if verb == "create":
            show(client.create_project(args.id, display_name=args.display_name,
                                       quota={k: v for k, v in args.quota.items() if v is not None}))
        elif verb == "get":
            printer.detail(client.get_project(args.id), view)
        elif verb == "list":
            printer.many(client.list_projects(), view)
        else:
            show(client.delete_project(args.id, force=args.force))
    elif kind == "quota":
        if verb == "get":
            printer.detail(client.get_quota(_quota_name(args.id)), view)
        elif verb == "set":
            show(client.update_quota(_quota_name(args.id), args.limits))
        else:
            printer.many(client.list_quotas(), view)
    elif kind == "flavor":
        if verb == "create":
            show(client.create_flavor(args.id, vcpus=args.vcpus, memory_mib=args.memory_mib,
                                      disk_gib=args.disk_gib, tenant=args.tenant if args.private else ""))
        elif verb == "list":
            printer.many(client.list_flavors(), view)
        else:
            show(client.delete_flavor(args.id if "/" in args.id else f"flavors/{args.id}"))
    elif kind == "image":
        if verb == "create":
            show(client.create_image(args.id, source=args.source, os_name=args.os, size_gib=args.size_gib))
        elif verb == "list":
            printer.many(client.list_images(), view)
        else:
            show(client.delete_image(args.id.removeprefix("images/")))
    elif kind == "token":
        if verb == "create":
            response = client.create_token(args.subject, args.grant, ttl_s=args.ttl)
            if printer.output in ("json", "yaml"):
                printer.one(response, view)
            else:
                # The token alone on stdout (for $(...)), what it is on stderr.
                print(f"{response.token.name}  {args.subject}  expires {response.token.expire_time.ToJsonString()}",
                      file=sys.stderr)
                printer.text(response.bearer_token)
        elif verb == "get":
            printer.detail(client.get_token(args.id), view)
        elif verb == "revoke":
            show(client.revoke_token(args.id))
        else:
            printer.detail(client.whoami(), view)
    elif kind == "audit":
        tenant = "" if args.all else args.tenant
        if verb == "list":
            printer.many(client.list_audit(tenant=tenant), view)
        else:
            printer.events((("ADDED", e.record) for e in client.watch_audit(tenant=tenant)
                            if e.type != common_pb2.BOOKMARK), view)
