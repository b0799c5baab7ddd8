"""``quanta tenant|project|quota|flavor|image|token|audit ...``: tenancy, catalog,
tokens and the audit log from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from google.protobuf.json_format import MessageToDict

from controlplane.gen.quanta.v1 import common_pb2
from controlplane.tenancy import DIMENSIONS
from quanta.cli.resources import common_options, print_list, print_message, run_with_client
from quanta.client import ROLES, Client

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


def _row(message) -> str:
    fields = MessageToDict(message)
    name = fields.pop("name", "")
    fields.pop("etag", None)
    return f"{name:<40} {json.dumps(fields, separators=(',', ':'))}"


def _quota_name(text: str) -> str:
    """``acme`` → the tenant's ticket; ``acme/web`` → the project's quota."""
    tenant, _, project = text.partition("/")
    return f"tenants/{tenant}/projects/{project}/quota" if project else f"tenants/{tenant}/quota"


def _parser(kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"quanta {kind}", parents=[common_options(False)])
    common = common_options(True)
    sub = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common])
        if named:
            p.add_argument("id")
        return p

    if kind in ("tenant", "project"):
        create = verb("create", f"create a {kind}")
        create.add_argument("--display-name", default="")
        create.add_argument("--quota", type=_limits, default={},
                            help="limits, e.g. vms=10,vcpus=8,memory_mib=16384,disk_gib=200 (default unlimited)")
        verb("get", f"show a {kind}")
        verb("list", f"list {kind}s", named=False)
        delete = verb("delete", f"delete a {kind} (refused while it holds VMs, unless --force)")
        delete.add_argument("--force", action="store_true",
                            help="delete its VMs first (a project takes no new VMs from then on; run again to "
                            "finish a deletion cut short)")
    elif kind == "quota":
        verb("get", "show a quota: TENANT (its ticket) or TENANT/PROJECT")
        setter = verb("set", "change limits: quanta quota set acme/web vms=20,vcpus=unlimited")
        setter.add_argument("limits", type=_limits)
        verb("list", "the quotas of --tenant's projects", named=False)
    elif kind == "flavor":
        create = verb("create", "create a flavor (public, or --private to --tenant)")
        create.add_argument("--vcpus", type=int, required=True)
        create.add_argument("--memory-mib", type=int, required=True)
        create.add_argument("--disk-gib", type=int, required=True)
        create.add_argument("--private", action="store_true", help="only for --tenant")
        verb("list", "flavors --tenant may use", named=False)
        verb("delete", "delete a flavor by name (flavors/F or tenants/T/flavors/F)")
    elif kind == "image":
        create = verb("create", "register an image")
        create.add_argument("--source", required=True, help="what drivers clone from, e.g. a template VM path")
        create.add_argument("--os", default="")
        create.add_argument("--size-gib", type=int, default=0)
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
        boot.add_argument("--root", default="/quanta")
        boot.add_argument("--subject", default="admin")
        boot.add_argument("--ttl", type=_duration, default=30 * 86400)
    elif kind == "audit":
        listing = verb("list", "audit records, oldest first (--tenant's; --all for everything)", named=False)
        watching = verb("watch", "stream new audit records until Ctrl-C", named=False)
        for p in (listing, watching):
            p.add_argument("--all", action="store_true", help="every tenant's and the system's records")
    return parser


def main(kind: str, argv: list[str]) -> None:
    args = _parser(kind).parse_args(argv)
    if kind == "token" and args.verb == "bootstrap":
        from controlplane.auth.bootstrap import bootstrap_admin_token

        print(asyncio.run(bootstrap_admin_token(args.etcd, args.root, subject=args.subject, ttl_s=args.ttl)))
        return
    run_with_client(args, lambda client: _run(kind, args, client))


def _run(kind: str, args, client: Client) -> None:  # noqa: C901 - one dispatch table, flat
    out = args.output

    def show(message) -> None:
        print_message(message, out, _row)

    verb = args.verb
    if kind == "tenant":
        if verb == "create":
            show(client.create_tenant(args.id, display_name=args.display_name,
                                      quota={k: v for k, v in args.quota.items() if v is not None}))
        elif verb == "get":
            show(client.get_tenant(args.id))
        elif verb == "list":
            print_list(client.list_tenants(), out, _row)
        else:
            show(client.delete_tenant(args.id, force=args.force))
    elif kind == "project":
        if verb == "create":
            show(client.create_project(args.id, display_name=args.display_name,
                                       quota={k: v for k, v in args.quota.items() if v is not None}))
        elif verb == "get":
            show(client.get_project(args.id))
        elif verb == "list":
            print_list(client.list_projects(), out, _row)
        else:
            show(client.delete_project(args.id, force=args.force))
    elif kind == "quota":
        if verb == "get":
            show(client.get_quota(_quota_name(args.id)))
        elif verb == "set":
            show(client.update_quota(_quota_name(args.id), args.limits))
        else:
            print_list(client.list_quotas(), out, _row)
    elif kind == "flavor":
        if verb == "create":
            show(client.create_flavor(args.id, vcpus=args.vcpus, memory_mib=args.memory_mib,
                                      disk_gib=args.disk_gib, tenant=args.tenant if args.private else ""))
        elif verb == "list":
            print_list(client.list_flavors(), out, _row)
        else:
            show(client.delete_flavor(args.id if "/" in args.id else f"flavors/{args.id}"))
    elif kind == "image":
        if verb == "create":
            show(client.create_image(args.id, source=args.source, os_name=args.os, size_gib=args.size_gib))
        elif verb == "list":
            print_list(client.list_images(), out, _row)
        else:
            show(client.delete_image(args.id))
    elif kind == "token":
        if verb == "create":
            response = client.create_token(args.subject, args.grant, ttl_s=args.ttl)
            if out == "json":
                print(json.dumps(MessageToDict(response), indent=2))
            else:
                print(f"{response.token.name}  {args.subject}  expires {response.token.expire_time.ToJsonString()}",
                      file=sys.stderr)
                print(response.bearer_token)
        elif verb == "get":
            show(client.get_token(args.id))
        elif verb == "revoke":
            show(client.revoke_token(args.id))
        else:
            show(client.whoami())
    elif kind == "audit":
        tenant = "" if args.all else args.tenant
        if verb == "list":
            print_list(client.list_audit(tenant=tenant), out, _row)
        else:
            for event in client.watch_audit(tenant=tenant):
                if event.type != common_pb2.BOOKMARK:
                    show(event.record)
