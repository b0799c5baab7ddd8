"""``quanta network create|get|list|update|delete|watch``: the networks VMs attach to
(a port group on the hosts and, optionally, a subnet whose addresses Quanta hands
out). ``--shared``: the tenant's networks, for all its projects (tenant admins)."""

from __future__ import annotations

import argparse

from controlplane.gen.quanta.v1 import common_pb2
from quanta.cli import views
from quanta.cli.output import Printer
from quanta.cli.resources import common_options, key_value, run_with_client, verb_maker
from quanta.client import Client


def _pool_range(text: str) -> tuple[str, str]:
    """``10.0.0.10-10.0.0.99`` → its two ends."""
    start, sep, end = text.partition("-")
    if not sep or not start.strip() or not end.strip():
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, e.g. 10.0.0.10-10.0.0.99, got {text!r}")
    return start.strip(), end.strip()


def _servers(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def fill_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the verbs of ``quanta network`` to ``parser`` (made with
    ``parents=[common_options(False)]``, here or in the completion scripts' tree)."""
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    shared = argparse.ArgumentParser(add_help=False)  # every verb takes --shared
    shared.add_argument("--shared", action="store_true",
                        help="the tenant's shared network (for all its projects) rather than the project's")
    verb = verb_maker(sub, [common_options(True), shared], "name", "NETWORK", "the network's id (or its full name)")
    create = verb("create", "create a network on a port group of the hosts")
    create.add_argument("--backing", required=True, metavar="PORTGROUP",
                        help="the (distributed) port group on the hosts; VMs go only to hosts that reach it")
    create.add_argument("--cidr", default="", help="a subnet whose addresses Quanta hands out, e.g. 10.20.0.0/24 "
                                                   "(without one: DHCP only)")
    create.add_argument("--gateway", default="", help="the subnet's gateway (never handed out)")
    create.add_argument("--dns", type=_servers, default=[], metavar="IP,...", help="DNS servers for static NICs")
    create.add_argument("--range", type=_pool_range, default=None, metavar="FIRST-LAST",
                        help="the addresses to hand out (default: every host address but the gateway)")
    create.add_argument("--label", action="append", type=key_value, default=[], metavar="K=V",
                        help="a label (repeatable)")
    create.add_argument("--description", default="", help="a description for people")
    create.add_argument("--request-id", default=None, help="idempotency key (default: random)")
    verb("get", "show a network: backing, subnet, addresses used")
    listing = verb("list", "list the project's networks and its tenant's shared ones", named=False)
    listing.add_argument("--selector", default="", metavar="K=V,...", help="only networks with these labels")
    update = verb("update", "change a network's labels, description or DNS servers")
    update.add_argument("--label", action="append", type=key_value, default=None, metavar="K=V",
                        help="the labels it gets (repeatable; replaces all of them)")
    update.add_argument("--description", default=None, help="the new description")
    update.add_argument("--dns", type=_servers, default=None, metavar="IP,...", help="the DNS servers it gets")
    update.add_argument("--etag", default="", help="only if the network is still at this etag")
    delete = verb("delete", "delete a network no VM uses")
    delete.add_argument("--etag", default="", help="only if the network is still at this etag")
    watch = verb("watch", "stream changes to the networks until Ctrl-C", named=False)
    watch.add_argument("--resource-version", type=int, default=0, metavar="N",
                       help="only changes after this version (default 0: the current ones first)")
    return parser


def main(argv: list[str]) -> None:
    parser = fill_parser(argparse.ArgumentParser(prog="quanta network", parents=[common_options(False)]))
    args = parser.parse_args(argv)
    if args.verb == "update" and args.label is None and args.description is None and args.dns is None:
        parser.error("nothing to change: give --label, --description or --dns")
    if args.verb == "create" and not args.cidr and (args.gateway or args.range or args.dns):
        parser.error("--gateway, --range and --dns belong to a subnet: give --cidr")
    run_with_client(args, lambda client, printer: _run(args, client, printer))


def _run(args, client: Client, printer: Printer) -> None:
    shared = args.shared
    if args.verb == "create":
        start, end = args.range or ("", "")
        printer.one(client.create_network(
            args.name, backing=args.backing, cidr=args.cidr, gateway=args.gateway, dns_servers=args.dns,
            range_start=start, range_end=end, labels=dict(args.label), description=args.description,
            shared=shared, request_id=args.request_id), views.NETWORK)
    elif args.verb == "get":
        printer.detail(client.get_network(args.name, shared=shared), views.NETWORK)
    elif args.verb == "list":
        printer.many(client.list_networks(label_selector=args.selector, shared=shared), views.NETWORK)
    elif args.verb == "update":
        printer.one(client.update_network(
            args.name, labels=dict(args.label) if args.label is not None else None, description=args.description,
            dns_servers=args.dns, shared=shared, etag=args.etag), views.NETWORK)
    elif args.verb == "delete":
        printer.one(client.delete_network(args.name, shared=shared, etag=args.etag), views.NETWORK)
    elif args.verb == "watch":
        events = client.watch_networks(resource_version=args.resource_version, shared=shared)
        printer.events(((common_pb2.EventType.Name(e.type), e.network) for e in events
                        if e.type != common_pb2.BOOKMARK), views.NETWORK)
