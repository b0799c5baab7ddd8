"""``quanta vm ...`` and ``quanta host ...``: the API from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable

from google.protobuf.json_format import MessageToDict

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.client import Client


def _vm_row(vm: vm_pb2.Vm) -> str:
    state = vm_pb2.Vm.State.Name(vm.state)
    reason = f"  ({vm.conditions[0].reason}: {vm.conditions[0].message})" if vm.conditions else ""
    return f"{vm.name.rsplit('/', 1)[-1]:<24} {state:<10} {vm.flavor:<8} {vm.image:<8} {vm.host or '-'}{reason}"


def _allocatable(host: host_pb2.Host) -> common_pb2.Resources:
    # A frontend older than the overcommit fields sends capacity only.
    return host.allocatable if host.HasField("allocatable") else host.capacity


def _host_row(host: host_pb2.Host) -> str:
    """One line: allocated out of allocatable (capacity × overcommit)."""
    state = host_pb2.Host.State.Name(host.state) + ("*" if host.maintenance else "")
    allocatable = _allocatable(host)
    return (f"{host.name.split('/', 1)[1]:<16} {state:<9} vms={host.vm_count:<6} "
            f"vcpus={host.allocated.vcpus}/{allocatable.vcpus} "
            f"mem={host.allocated.memory_mib}/{allocatable.memory_mib}MiB")


def _host_detail(host: host_pb2.Host) -> str:
    """``quanta host get``: the host, then its raw capacity, overcommit ratios,
    allocatable capacity (their product) and allocation, per resource."""
    state = host_pb2.Host.State.Name(host.state) + (" (maintenance)" if host.maintenance else "")
    o = host.overcommit if host.HasField("overcommit") else host_pb2.Overcommit(vcpus=1, memory=1, disk=1)
    allocatable = _allocatable(host)
    rows = [("", "vcpus", "memory_mib", "disk_gib"),
            ("capacity", *_amounts(host.capacity)),
            ("overcommit", f"{o.vcpus:g}", f"{o.memory:g}", f"{o.disk:g}"),
            ("allocatable", *_amounts(allocatable)),
            ("allocated", *_amounts(host.allocated))]
    labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
    return "\n".join([
        f"name:    {host.name.split('/', 1)[1]}",
        f"state:   {state}",
        f"driver:  {host.driver or '-'}",
        f"vms:     {host.vm_count}",
        f"labels:  {labels}",
        *(f"{name:<12} {a:>8} {b:>11} {c:>9}" for name, a, b, c in rows),
    ])


def _amounts(r: common_pb2.Resources) -> tuple[str, str, str]:
    return str(r.vcpus), str(r.memory_mib), str(r.disk_gib)


def _orphan_row(orphan: host_pb2.OrphanVm) -> str:
    power = "on" if orphan.powered_on else "off"
    adoptable = "" if orphan.adoptable else "  (not adoptable)"
    return (f"{orphan.host.split('/', 1)[1]:<16} {orphan.uid:<34} {power:<4} {orphan.vm or '-'} "
            f"{orphan.flavor or '-'}{adoptable}")


def print_message(message, output: str, row) -> None:
    if output == "json":
        print(json.dumps(MessageToDict(message), indent=2), flush=True)
    else:
        print(row(message), flush=True)


def print_list(messages: Iterable, output: str, row) -> None:
    """A listing: one row per message, or (json) one JSON array, written as the
    pages arrive ([] when empty; a listing cut by an error leaves the array open
    and the command fails)."""
    if output != "json":
        for message in messages:
            print_message(message, output, row)
        return
    sep = "[\n"
    for message in messages:
        sys.stdout.write(sep + json.dumps(MessageToDict(message), indent=2))
        sys.stdout.flush()
        sep = ",\n"
    print("[]" if sep == "[\n" else "\n]", flush=True)


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the verb (``quanta vm -o json list`` and
    ``quanta vm list -o json``); after the verb they only override."""
    parser = argparse.ArgumentParser(add_help=False)

    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--context", default=default(None),
                        help="the config context to use (default: $QUANTA_CONTEXT or the current one)")
    parser.add_argument("--endpoint", default=default(None),
                        help="API address (default: $QUANTA_ENDPOINT, the context's or `quanta up`'s)")
    parser.add_argument("--token", default=default(None),
                        help="bearer token (default: $QUANTA_TOKEN, the context's or `quanta up`'s admin token)")
    parser.add_argument("--tls-ca", default=default(None), help="verify the API's TLS certificate with this PEM")
    parser.add_argument("--tenant", default=default(None))
    parser.add_argument("--project", default=default(None))
    parser.add_argument("-o", "--output", choices=("table", "json"), default=default("table"))
    return parser


def run_with_client(args, action) -> None:
    """Run ``action(client)`` with a client built from the common options; API
    errors print as ``error: CODE: REASON: message`` (and field violations), a
    ``--wait`` that ran out of time as ``error: message``; both exit 1."""
    try:
        with Client(args.endpoint, token=args.token, tenant=args.tenant, project=args.project,
                    tls_ca=args.tls_ca, context=args.context) as client:
            # Flags not given resolve through $QUANTA_* and the context (quanta.config).
            args.tenant, args.project = client.tenant, client.project
            action(client)
    except ApiError as err:
        print(f"error: {err.code.name}: {err.reason}: {err.message}", file=sys.stderr)
        for field, description in err.field_violations:
            print(f"  {field}: {description}", file=sys.stderr)
        sys.exit(1)
    except TimeoutError as err:  # a --wait that ran out of time
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: end quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def main(kind: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"quanta {kind}", parents=[common_options(False)])
    common = common_options(True)
    sub = parser.add_subparsers(dest="verb", required=True)
    if kind == "vm":
        create = sub.add_parser("create", help="create a VM (returns at once, PENDING)", parents=[common])
        create.add_argument("--name", default="", help="VM id, e.g. web-1 (default: one is assigned)")
        create.add_argument("--flavor", required=True, help="small, medium, large")
        create.add_argument("--image", required=True, help="ubuntu, debian, photon")
        create.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
        create.add_argument("--request-id", default=None, help="idempotency key (default: random)")
        create.add_argument("--node-selector", action="append", default=[], metavar="K=V",
                            help="only hosts with this label (repeatable)")
        create.add_argument("--anti-affinity-group", default="", help="no two VMs of this group on one host")
        create.add_argument("--anti-affinity-scope", choices=("HOST", "ZONE"), default="HOST",
                            help="ZONE: nor two (zone-scoped) VMs of the group in one zone")
        create.add_argument("--affinity-group", default="",
                            help="only on a host (or zone, see --affinity-scope) that runs a VM of this group")
        create.add_argument("--affinity-scope", choices=("HOST", "ZONE"), default="HOST")
        create.add_argument("--restart-policy", choices=("ALWAYS", "NEVER"), default="ALWAYS",
                            help="when its host is drained or dead: ALWAYS place it again, NEVER delete it")
        create.add_argument("--wait", action="store_true", help="wait until RUNNING")
        for verb in ("get", "delete"):
            p = sub.add_parser(verb, parents=[common])
            p.add_argument("name")
        sub.choices["delete"].add_argument("--etag", default="")
        listing = sub.add_parser("list", parents=[common])
        listing.add_argument("--selector", default="", help="label selector k=v,k2=v2")
        watch = sub.add_parser("watch", help="stream changes until Ctrl-C", parents=[common])
        watch.add_argument("--resource-version", type=int, default=0)
        watch.add_argument("--selector", default="")
    else:
        sub.add_parser("list", parents=[common])
        get = sub.add_parser("get", parents=[common])
        get.add_argument("name")
        maintenance = sub.add_parser("maintenance", help="no new VMs on the host (system admins)",
                                     parents=[common])
        maintenance.add_argument("name")
        maintenance.add_argument("--off", action="store_true", help="take the host out of maintenance")
        drain = sub.add_parser("drain", help="maintenance, then its VMs are moved off by restart policy "
                               "(returns at once; --wait to follow it)", parents=[common])
        drain.add_argument("name")
        drain.add_argument("--wait", action="store_true",
                           help="follow the host until it holds no VMs, printing how many are left")
        drain.add_argument("--timeout", type=float, default=300.0,
                           help="with --wait: seconds to wait for the host to empty (then exit 1; the drain goes on)")
        delete = sub.add_parser("delete", help="forget a host with no heartbeat and no VMs (system admins)",
                                parents=[common])
        delete.add_argument("name")
        orphans = sub.add_parser(
            "orphans", parents=[common],
            help="VMs quarantined on hosts: unknown to the store, no tombstone (system admins)",
            usage="quanta host orphans [HOST] | orphans adopt HOST UID | orphans destroy HOST UID")
        orphans.add_argument("words", nargs="*", metavar="ARG",
                             help="HOST: list that host's; adopt HOST UID: back under its project (charges its "
                                  "quota); destroy HOST UID: its agent destroys it")
    args = parser.parse_args(argv)
    if kind == "host" and args.verb == "orphans":
        words = args.words
        if (words[:1] in (["adopt"], ["destroy"]) and len(words) != 3) or (
                words[:1] not in (["adopt"], ["destroy"]) and len(words) > 1):
            parser.error("usage: quanta host orphans [HOST] | orphans adopt HOST UID | orphans destroy HOST UID")
    run_with_client(args, lambda client: _run(kind, args, client))


def _run(kind: str, args, client: Client) -> None:
    out = args.output
    if kind == "host":
        if args.verb == "list":
            print_list(client.list_hosts(), out, _host_row)
        elif args.verb == "maintenance":
            print_message(client.set_maintenance(args.name, not args.off), out, _host_row)
        elif args.verb == "drain":
            progress = sys.stderr if out == "json" else sys.stdout  # stdout stays one JSON document

            def show(host: host_pb2.Host) -> None:
                print(f"{host.name}: {host.vm_count} VMs left", file=progress, flush=True)

            print_message(client.drain_host(args.name, wait=args.wait, timeout_s=args.timeout, on_progress=show),
                          out, _host_row)
        elif args.verb == "delete":
            print_message(client.delete_host(args.name), out, _host_row)
        elif args.verb == "orphans":
            words = args.words
            if words[:1] == ["adopt"]:
                print_message(client.adopt_orphan(words[1], words[2]), out, _vm_row)
            elif words[:1] == ["destroy"]:
                print_message(client.destroy_orphan(words[1], words[2]), out, _orphan_row)
            else:
                print_list(client.list_orphans(words[0] if words else ""), out, _orphan_row)
        else:
            print_message(client.get_host(args.name), out, _host_detail)
        return
    if args.verb == "create":
        labels = dict(item.split("=", 1) for item in args.label if "=" in item)
        selector = dict(item.split("=", 1) for item in args.node_selector if "=" in item)
        vm = client.create_vm(args.name, flavor=args.flavor, image=args.image, labels=labels,
                              request_id=args.request_id, node_selector=selector,
                              anti_affinity_group=args.anti_affinity_group, restart_policy=args.restart_policy,
                              anti_affinity_scope=args.anti_affinity_scope, affinity_group=args.affinity_group,
                              affinity_scope=args.affinity_scope)
        print_message(vm, out, _vm_row)
        if args.wait:
            print_message(client.wait_for_vm(vm.name, "RUNNING"), out, _vm_row)
    elif args.verb == "get":
        print_message(client.get_vm(args.name), out, _vm_row)
    elif args.verb == "list":
        print_list(client.list_vms(label_selector=args.selector), out, _vm_row)
    elif args.verb == "delete":
        print_message(client.delete_vm(args.name, etag=args.etag), out, _vm_row)
    elif args.verb == "watch":
        for event in client.watch_vms(resource_version=args.resource_version, label_selector=args.selector):
            if event.type == common_pb2.BOOKMARK:
                continue
            kind_name = common_pb2.EventType.Name(event.type)
            if out == "json":
                print(json.dumps(MessageToDict(event)), flush=True)
            else:
                print(f"{kind_name:<9} {_vm_row(event.vm)}", flush=True)
