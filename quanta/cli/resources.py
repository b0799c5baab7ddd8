"""``quanta vm ...`` and ``quanta host ...``: the API from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import auth_pb2, common_pb2, vm_pb2
from quanta.cli import views
from quanta.cli.errors import CliError, guarded
from quanta.cli.output import FORMATS, Printer, Section, short_name
from quanta.cli.waiting import wait_for_drain, wait_for_vm
from quanta.client import Client, resolve_endpoint

DEFAULT_WAIT_S = 300.0


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the verb (``quanta vm -o json list`` and
    ``quanta vm list -o json``); after the verb they only override."""
    parser = argparse.ArgumentParser(add_help=False)

    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--context", default=default(None),
                        help="the config context to use (default: $QUANTA_CONTEXT or the current one; "
                             "see `quanta context list`)")
    parser.add_argument("--endpoint", default=default(None),
                        help="API address host:port (default: $QUANTA_ENDPOINT, the context's or `quanta up`'s)")
    parser.add_argument("--token", default=default(None),
                        help="bearer token (default: $QUANTA_TOKEN, the context's or `quanta up`'s admin token)")
    parser.add_argument("--tls-ca", default=default(None),
                        help="verify the API's TLS certificate with this PEM file (default: $QUANTA_TLS_CA; "
                             "without one the connection is plaintext)")
    parser.add_argument("--tenant", default=default(None),
                        help="the tenant to act in (default: $QUANTA_TENANT, the context's, else default)")
    parser.add_argument("--project", default=default(None),
                        help="the project to act in, within --tenant (default: $QUANTA_PROJECT, the context's, "
                             "else default)")
    parser.add_argument("-o", "--output", choices=FORMATS, default=default("table"),
                        help="table (default), wide (more columns), json or yaml (the API's fields), "
                             "name (one vms/NAME-style name a line)")
    return parser


def add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    """``--wait`` and ``--timeout`` for a verb whose effect is asynchronous."""
    parser.add_argument("--wait", action="store_true", help=f"wait until {what}, showing progress")
    parser.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                        help=f"with --wait: give up after this long, exit 1 and say what was last seen "
                             f"(the operation goes on; default {DEFAULT_WAIT_S:g})")


def run_with_client(args, action: Callable[[Client, Printer], None]) -> None:
    """Run ``action(client, printer)`` with a client built from the common options;
    every expected failure ends as a message and an exit code (errors.guarded)."""
    client: Client | None = None

    def endpoint() -> str:
        return client.endpoint if client is not None else resolve_endpoint(args.endpoint)

    with guarded(endpoint, lambda: client.context if client is not None else args.context):
        try:
            client = Client(args.endpoint, token=args.token, tenant=args.tenant, project=args.project,
                            tls_ca=args.tls_ca, context=args.context)
        except OSError as err:  # the TLS CA file
            raise CliError(f"--tls-ca: cannot read {err.filename}: {err.strerror}", exit_code=2) from None
        with client:
            # Flags not given resolve through $QUANTA_* and the context (quanta.config).
            args.tenant, args.project = client.tenant, client.project
            action(client, Printer(args.output))


def vm_id(text: str) -> str:
    """What NAME may be: ``web-1``, ``vms/web-1`` (as ``-o name`` prints) or the full name."""
    return text.removeprefix("vms/")


def recent_audit(client: Client, resource: str, *, tenant: str = "", limit: int = 5) -> list[auth_pb2.AuditRecord]:
    """The last ``limit`` audit records about ``resource`` (its full name), oldest
    first, from ``tenant``'s log ("" for the whole log). The API has no filter by
    resource: this reads the log through, page by page. Raises ApiError
    (PERMISSION_DENIED or NOT_FOUND when the caller may not read that log)."""
    recent: list[auth_pb2.AuditRecord] = []
    for record in client.list_audit(tenant=tenant):
        if record.resource == resource:
            recent.append(record)
            del recent[:-limit]
    return recent


def readable_audit(client: Client, resource: str, tenant: str) -> list[auth_pb2.AuditRecord] | None:
    """Recent audit records about ``resource``, or None when the caller may not read them."""
    try:
        return recent_audit(client, resource, tenant=tenant)
    except ApiError as err:
        if err.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
            return None
        raise


def _vm_parser(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = sub.add_parser("create", parents=[common], help="create a VM (PENDING at once; --wait until RUNNING)",
                            description="Create a VM. It is PENDING at once; the scheduler places it and its "
                                        "host's agent makes it. --wait follows it until RUNNING.")
    create.add_argument("name_arg", nargs="?", metavar="NAME", default=None,
                        help="VM id, e.g. web-1: 1 to 63 lowercase letters, digits and hyphens, starting with a "
                             "letter (default: one is assigned)")
    create.add_argument("--name", default=None, help="the same as NAME")
    create.add_argument("--flavor", required=True,
                        help="its size, e.g. small, medium, large (see `quanta flavor list`)")
    create.add_argument("--image", required=True, help="what it runs, e.g. ubuntu (see `quanta image list`)")
    create.add_argument("--label", action="append", default=[], metavar="K=V", help="a label (repeatable)")
    create.add_argument("--request-id", default=None,
                        help="idempotency key: the same create with the same key makes one VM (default: random)")
    create.add_argument("--node-selector", action="append", default=[], metavar="K=V",
                        help="only hosts with this label (repeatable)")
    create.add_argument("--anti-affinity-group", default="", metavar="GROUP",
                        help="no two VMs of this group on one host")
    create.add_argument("--anti-affinity-scope", choices=("HOST", "ZONE"), default="HOST",
                        help="ZONE: nor two (zone-scoped) VMs of the group in one zone (default HOST)")
    create.add_argument("--affinity-group", default="", metavar="GROUP",
                        help="only on a host (or zone, see --affinity-scope) that runs a VM of this group")
    create.add_argument("--affinity-scope", choices=("HOST", "ZONE"), default="HOST",
                        help="where --affinity-group applies: the same HOST (default) or ZONE")
    create.add_argument("--restart-policy", choices=("ALWAYS", "NEVER"), default="ALWAYS",
                        help="when its host is drained or dead: ALWAYS place it again (default), NEVER delete it")
    add_wait(create, "it is RUNNING")
    get = sub.add_parser("get", parents=[common], help="show a VM: state, conditions, placement, recent audit")
    get.add_argument("name", metavar="NAME", help="VM id (web-1, vms/web-1 or its full name)")
    delete = sub.add_parser("delete", parents=[common], help="delete a VM (DELETING at once; --wait until gone)")
    delete.add_argument("name", metavar="NAME", help="VM id (web-1, vms/web-1 or its full name)")
    delete.add_argument("--etag", default="", help="only if the VM is still at this etag (from `get -o json`)")
    add_wait(delete, "it is gone")
    listing = sub.add_parser("list", parents=[common], help="list the project's VMs")
    listing.add_argument("--selector", default="", metavar="K=V,...", help="only VMs with these labels")
    watch = sub.add_parser("watch", parents=[common], help="stream changes to the project's VMs until Ctrl-C",
                           description="Print the project's VMs, then each change as it happens, until Ctrl-C.")
    watch.add_argument("--resource-version", type=int, default=0, metavar="N",
                       help="only changes after this version (default 0: the current VMs first)")
    watch.add_argument("--selector", default="", metavar="K=V,...", help="only VMs with these labels")


def _host_parser(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    sub.add_parser("list", parents=[common], help="list hosts with their allocation (system admins)")
    get = sub.add_parser("get", parents=[common], help="show a host: capacity, overcommit, allocation, recent audit")
    get.add_argument("name", metavar="HOST", help="host id (or hosts/HOST)")
    maintenance = sub.add_parser("maintenance", parents=[common], help="no new VMs on the host (system admins)")
    maintenance.add_argument("name", metavar="HOST", help="host id (or hosts/HOST)")
    maintenance.add_argument("--off", action="store_true", help="take the host out of maintenance")
    drain = sub.add_parser("drain", parents=[common],
                           help="maintenance, then its VMs are moved off by restart policy "
                                "(returns at once; --wait to follow it)")
    drain.add_argument("name", metavar="HOST", help="host id (or hosts/HOST)")
    add_wait(drain, "the host holds no VMs")
    delete = sub.add_parser("delete", parents=[common],
                            help="forget a host with no heartbeat and no VMs (system admins)")
    delete.add_argument("name", metavar="HOST", help="host id (or hosts/HOST)")
    orphans = sub.add_parser(
        "orphans", parents=[common],
        help="VMs quarantined on hosts: unknown to the store, no tombstone (system admins)",
        usage="quanta host orphans [HOST] | orphans adopt HOST UID | orphans destroy HOST UID")
    orphans.add_argument("words", nargs="*", metavar="ARG",
                         help="HOST: list that host's; adopt HOST UID: back under its project (charges its "
                              "quota); destroy HOST UID: its agent destroys it")


def fill_parser(kind: str, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the verbs of ``quanta vm`` or ``quanta host`` to ``parser``, which was made
    with ``parents=[common_options(False)]`` (here, or in the completion scripts'
    parser tree)."""
    (_vm_parser if kind == "vm" else _host_parser)(parser, common_options(True))
    return parser


def main(kind: str, argv: list[str]) -> None:
    parser = fill_parser(kind, argparse.ArgumentParser(prog=f"quanta {kind}", parents=[common_options(False)]))
    args = parser.parse_args(argv)
    if kind == "host" and args.verb == "orphans":
        words = args.words
        if (words[:1] in (["adopt"], ["destroy"]) and len(words) != 3) or (
                words[:1] not in (["adopt"], ["destroy"]) and len(words) > 1):
            parser.error("usage: quanta host orphans [HOST] | orphans adopt HOST UID | orphans destroy HOST UID")
    if kind == "vm" and args.verb == "create":
        if args.name_arg and args.name and args.name_arg != args.name:
            parser.error(f"NAME {args.name_arg!r} and --name {args.name!r} differ; give one")
        args.name = vm_id(args.name_arg or args.name or "")
    run_with_client(args, lambda client, printer: (_host if kind == "host" else _vm)(args, client, printer))


def _host(args, client: Client, printer: Printer) -> None:
    if args.verb == "list":
        printer.many(client.list_hosts(), views.HOST)
    elif args.verb == "get":
        host = client.get_host(args.name)
        printer.detail(host, views.HOST, [views.audit_section(readable_audit(client, host.name, ""))]
                       if printer.output == "table" else [])
    elif args.verb == "maintenance":
        printer.one(client.set_maintenance(args.name, not args.off), views.HOST)
    elif args.verb == "drain":
        host = client.drain_host(args.name)
        if args.wait:
            with printer.progress(total=host.vm_count) as progress:
                host = wait_for_drain(client, host.name, timeout_s=args.timeout, progress=progress)
        printer.one(host, views.HOST)
    elif args.verb == "delete":
        printer.one(client.delete_host(args.name), views.HOST)
    elif args.verb == "orphans":
        words = args.words
        if words[:1] == ["adopt"]:
            printer.one(client.adopt_orphan(words[1], words[2]), views.VM)
        elif words[:1] == ["destroy"]:
            printer.one(client.destroy_orphan(words[1], words[2]), views.ORPHAN)
        else:
            printer.many(client.list_orphans(words[0] if words else ""), views.ORPHAN)


def _vm(args, client: Client, printer: Printer) -> None:
    if args.verb == "create":
        labels = dict(item.split("=", 1) for item in args.label if "=" in item)
        selector = dict(item.split("=", 1) for item in args.node_selector if "=" in item)
        vm = client.create_vm(args.name, flavor=args.flavor, image=args.image, labels=labels,
                              request_id=args.request_id, node_selector=selector,
                              anti_affinity_group=args.anti_affinity_group, restart_policy=args.restart_policy,
                              anti_affinity_scope=args.anti_affinity_scope, affinity_group=args.affinity_group,
                              affinity_scope=args.affinity_scope)
        if args.wait:
            with printer.progress() as progress:
                final = wait_for_vm(client, vm, lambda v: v.state in (vm_pb2.Vm.RUNNING, vm_pb2.Vm.ERROR),
                                    goal="the creation", timeout_s=args.timeout, progress=progress)
            if final is None:
                raise CliError(f"{short_name(vm.name)} was deleted before it ran")
            printer.one(final, views.VM)
            if final.state == vm_pb2.Vm.ERROR:
                raise CliError(f"{short_name(vm.name)} failed: {views.vm_reason(final) or 'ERROR'}")
        else:
            printer.one(vm, views.VM)
    elif args.verb == "get":
        vm = client.get_vm(vm_id(args.name))
        extra: list[Section] = []
        if printer.output == "table":
            extra.append(views.audit_section(readable_audit(client, vm.name, client.tenant)))
        printer.detail(vm, views.VM, extra)
    elif args.verb == "list":
        printer.many(client.list_vms(label_selector=args.selector), views.VM)
    elif args.verb == "delete":
        vm = client.delete_vm(vm_id(args.name), etag=args.etag)
        if not args.wait:
            printer.one(vm, views.VM)
            return
        with printer.progress() as progress:
            wait_for_vm(client, vm, lambda v: False, goal="the deletion", timeout_s=args.timeout,
                        progress=progress)
        if printer.output in ("table", "wide"):
            printer.text(f"{short_name(vm.name)} deleted")
        else:
            printer.one(vm, views.VM)
    elif args.verb == "watch":
        events = client.watch_vms(resource_version=args.resource_version, label_selector=args.selector)
        printer.events(((common_pb2.EventType.Name(e.type), e.vm) for e in events if e.type != common_pb2.BOOKMARK),
                       views.VM)
