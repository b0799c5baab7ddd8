"""``quanta disk create|get|list|update|delete|watch``: persistent disks of a project,
attached to VMs with ``quanta vm attach-disk`` (or ``vm create --disk``); they
outlive their VMs."""

from __future__ import annotations

import argparse

from controlplane.gen.quanta.v1 import common_pb2
from quanta.cli import views
from quanta.cli.output import Printer
from quanta.cli.resources import common_options, key_value, run_with_client, verb_maker
from quanta.client import Client


def fill_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the verbs of ``quanta disk`` to ``parser`` (made with
    ``parents=[common_options(False)]``, here or in the completion scripts' tree)."""
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    verb = verb_maker(sub, [common_options(True)], "name", "DISK", "the disk's id (or its full name)")
    create = verb("create", "create a persistent disk (AVAILABLE), charged to the project's quota")
    create.add_argument("--size", type=int, required=True, metavar="GIB", help="its size in GiB (1-65536)")
    create.add_argument("--class", dest="datastore_class", default="", metavar="CLASS",
                        help="the datastore class it lives on (hosts labelled datastore.quanta.io/CLASS; "
                             "default standard)")
    create.add_argument("--label", action="append", type=key_value, default=[], metavar="K=V",
                        help="a label (repeatable)")
    create.add_argument("--description", default="", help="a description for people")
    create.add_argument("--request-id", default=None, help="idempotency key (default: random)")
    verb("get", "show a disk: size, class, state, the VM it is attached to")
    listing = verb("list", "list the project's disks", named=False)
    listing.add_argument("--selector", default="", metavar="K=V,...", help="only disks with these labels")
    update = verb("update", "change a disk's labels or description")
    update.add_argument("--label", action="append", type=key_value, default=None, metavar="K=V",
                        help="the labels it gets (repeatable; replaces all of them)")
    update.add_argument("--description", default=None, help="the new description")
    update.add_argument("--etag", default="", help="only if the disk is still at this etag")
    delete = verb("delete", "delete a detached disk and its data")
    delete.add_argument("--etag", default="", help="only if the disk is still at this etag")
    watch = verb("watch", "stream changes to the project's disks until Ctrl-C", named=False)
    watch.add_argument("--resource-version", type=int, default=0, metavar="N",
                       help="only changes after this version (default 0: the current ones first)")
    return parser


def main(argv: list[str]) -> None:
    parser = fill_parser(argparse.ArgumentParser(prog="quanta disk", parents=[common_options(False)]))
    args = parser.parse_args(argv)
    if args.verb == "update" and args.label is None and args.description is None:
        parser.error("nothing to change: give --label or --description")
    run_with_client(args, lambda client, printer: _run(args, client, printer))


def _run(args, client: Client, printer: Printer) -> None:
    if args.verb == "create":
        printer.one(client.create_disk(args.name, size_gib=args.size, datastore_class=args.datastore_class,
                                       labels=dict(args.label), description=args.description,
                                       request_id=args.request_id), views.DISK)
    elif args.verb == "get":
        printer.detail(client.get_disk(args.name), views.DISK)
    elif args.verb == "list":
        printer.many(client.list_disks(label_selector=args.selector), views.DISK)
    elif args.verb == "update":
        printer.one(client.update_disk(args.name, labels=dict(args.label) if args.label is not None else None,
                                       description=args.description, etag=args.etag), views.DISK)
    elif args.verb == "delete":
        printer.one(client.delete_disk(args.name, etag=args.etag), views.DISK)
    elif args.verb == "watch":
        events = client.watch_disks(resource_version=args.resource_version)
        printer.events(((common_pb2.EventType.Name(e.type), e.disk) for e in events
                        if e.type != common_pb2.BOOKMARK), views.DISK)
