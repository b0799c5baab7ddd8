"""``quanta vm ...`` and ``quanta host ...``: the API from the command line."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import auth_pb2, common_pb2, vm_pb2
from quanta.calls import nic_input
from quanta.cli import manifest, views
from quanta.cli.errors import FLAGS, CliError, describe, guarded
from quanta.cli.output import FORMATS, Printer, Section, last_id, plural, short_name
from quanta.cli.waiting import (
    as_desired,
    failed,
    running,
    stopped,
    wait_for_drain,
    wait_for_members,
    wait_for_vm,
    wait_for_vms,
)
from quanta.client import Client, resolve_endpoint
from quanta.errors import Aborted
from quanta.waits import describe_set

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


def verb_maker(sub, parents: Sequence[argparse.ArgumentParser], dest: str, metavar: str,
               id_help: str) -> Callable[..., argparse.ArgumentParser]:
    """``verb(name, help_text, *, named=True)`` for one kind's subcommands ``sub``:
    it adds the verb ``name`` with ``parents`` (the common options, and any option
    every verb of the kind takes), ``help_text`` in the verb list and, capitalised
    and with a full stop, as its description; with ``named``, the positional id of
    the resource (``dest``, ``metavar``, ``id_help``). Returns the verb's parser."""

    def verb(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                           parents=list(parents))
        if named:
            p.add_argument(dest, metavar=metavar, help=id_help)
        return p

    return verb


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

    with guarded(endpoint, lambda: client.context if client is not None else args.context, cli_flags(args)):
        try:
            client = Client(args.endpoint, token=args.token, tenant=args.tenant, project=args.project,
                            tls_ca=args.tls_ca, context=args.context)
        except OSError as err:  # the TLS CA file
            raise CliError(f"--tls-ca: cannot read {err.filename}: {err.strerror}", exit_code=2) from None
        with client:
            # Flags not given resolve through $QUANTA_* and the context (quanta.config).
            args.tenant, args.project = client.tenant, client.project
            action(client, Printer(args.output))


def cli_flags(args: argparse.Namespace) -> Mapping[str, str]:
    """API field → what the user typed, for this command's field violations: as
    everywhere (errors.FLAGS), but ``vm resize NAME FLAVOR`` takes the flavor as an
    argument, not as --flavor."""
    return {**FLAGS, "vm.flavor": "FLAVOR"} if getattr(args, "verb", None) == "resize" else FLAGS


def key_value(text: str) -> tuple[str, str]:
    """``K=V`` (an argparse type): the pair; an argparse error without ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def duration(text: str) -> float:
    """``30s``, ``2m``, ``1m30s``, ``500ms``, ``1h`` or plain seconds (``45``) →
    seconds (an argparse type)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 2m or 1m30s, got {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def read_input(path: str, flag: str) -> bytes:
    """The bytes of the file ``path`` (``-``: stdin) given to ``flag``; CliError
    (exit 2) naming the flag and the file, never its content, if unreadable."""
    try:
        return sys.stdin.buffer.read() if path == "-" else pathlib.Path(path).expanduser().read_bytes()
    except OSError as err:
        raise CliError(f"{flag}: cannot read {path}: {err.strerror}", exit_code=2) from None


def ssh_keys(paths: list[str]) -> list[str]:
    """The public keys in the files ``paths`` (``--ssh-key``): each non-empty line
    that is not a comment, as an authorized_keys file holds them."""
    keys: list[str] = []
    for path in paths:
        text = read_input(path, "--ssh-key").decode("utf-8", errors="replace")
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return keys


def merged_labels(labels: Mapping[str, str], add: list[tuple[str, str]], remove: list[str]) -> dict[str, str]:
    """``labels`` with ``add`` set and ``remove`` gone (a key not there is no error)."""
    out = {k: v for k, v in labels.items() if k not in remove}
    out.update(add)
    return out


def nic(text: str) -> str:
    """``net=NETWORK[,ip=pool|dhcp|ADDRESS]`` (an argparse type): the text, checked."""
    try:
        nic_input(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


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
    data = create.add_mutually_exclusive_group()
    data.add_argument("--user-data", metavar="FILE", default=None,
                      help="cloud-init user data (#cloud-config, a script, ...; at most 64 KiB; - for stdin): "
                           "given to the guest once, never shown again, deleted once the guest bootstrapped")
    data.add_argument("--ignition", metavar="FILE", default=None,
                      help="an Ignition config (JSON) instead of --user-data, kept and cleared the same way")
    create.add_argument("--metadata", action="append", default=[], type=key_value, metavar="K=V",
                        help="instance metadata the guest reads beside its user data (repeatable; "
                             "instance-id and local-hostname set those)")
    create.add_argument("--ssh-key", action="append", default=[], metavar="FILE",
                        help="public SSH keys for the guest, one a line (repeatable)")
    create.add_argument("--hostname", default="", help="the guest's hostname (default: the VM's id)")
    create.add_argument("--stopped", action="store_true",
                        help="create it powered off (STOPPED; it keeps its host and quota; `quanta vm start`)")
    create.add_argument("--power-policy", choices=("KEEP_STOPPED", "KEEP_RUNNING"), default="KEEP_STOPPED",
                        help="when found off without a stop: KEEP_STOPPED report it STOPPED (default), "
                             "KEEP_RUNNING power it on again")
    create.add_argument("--nic", action="append", type=nic, default=[], metavar="net=NETWORK[,ip=pool|dhcp|ADDRESS]",
                        help="a NIC (repeatable, in order; the first is the primary): on NETWORK (the project's, "
                             "else the tenant's shared one), its address from the network's pool, DHCP "
                             "(default) or ADDRESS (default without --nic: one DHCP NIC on the hosts' network)")
    create.add_argument("--disk", action="append", default=[], metavar="DISK",
                        help="a persistent disk of the project to attach (repeatable; `quanta disk create`)")
    add_wait(create, "it is RUNNING with its address (or STOPPED with --stopped)")
    many = sub.add_parser(
        "create-many", parents=[common],
        help="create the VMs a YAML file lists in one call (--all-or-nothing: all placed together or none)",
        description="Create up to 1,000 VMs in one call from a YAML file (a defaults: block and a vms: list; "
                    "see `quanta.cli.manifest` or the README). Each VM is created or refused on its own, unless "
                    "--all-or-nothing: then they form a set, admitted against the quota as a whole and placed "
                    "in one transaction or not at all (until --deadline, then the set FAILS and its VMs are "
                    "removed). Prints each VM's outcome; exits 1 if any was refused or the wait failed. "
                    "--plan creates nothing: it shows where each VM would go now (all together), whether the "
                    "set fits and the quota it leaves, and exits 1 if it does not fit; with --hold it also "
                    "holds that room and names a plan, which --from-plan then creates the set on.")
    many.add_argument("-f", "--file", required=True, metavar="FILE",
                      help="the YAML file (user_data_file, ignition_file, ssh_key_files relative to it)")
    many.add_argument("--all-or-nothing", action="store_true",
                      help="all of them or none: one quota admission, one placement transaction")
    many.add_argument("--set-id", default="", metavar="ID",
                      help="with --all-or-nothing: the set's id (default: one is assigned)")
    many.add_argument("--deadline", type=duration, default=None, metavar="DURATION",
                      help="with --all-or-nothing: how long the set may wait for room before it FAILS, "
                           "e.g. 10m (default 10m, at most 24h)")
    many.add_argument("--validate-only", action="store_true",
                      help="check every VM (quota included) and create nothing")
    many.add_argument("--request-id", default=None,
                      help="with --all-or-nothing: the set's idempotency key (the same call with the same key "
                           "makes one set; default: random). Independent VMs take theirs in the file")
    many.add_argument("--plan", action="store_true",
                      help="create nothing: show where each VM would be placed now, all together (as "
                           "--all-or-nothing places them), or which filters ruled out how many hosts; whether "
                           "the set fits and the project's quota left after it. Exits 1 if it does not fit")
    many.add_argument("--hold", type=duration, default=None, metavar="DURATION",
                      help="with --plan: hold the room found for this long (e.g. 60s; at most 10m) and print "
                           "the plan's name, for --from-plan; nothing is held if the set does not fit")
    many.add_argument("--from-plan", default="", metavar="PLAN",
                      help="create the set on the room a `--plan --hold` held (plan-..., plans/plan-... or its "
                           "full name), for the same file; implies --all-or-nothing. Fails (PLAN_EXPIRED) once "
                           "the hold has ended")
    add_wait(many, "every VM is RUNNING with its address (STOPPED if created stopped), with a bar of how many "
                   "are placed and running")
    vm_set = sub.add_parser("set", parents=[common], help="VM sets made by create-many --all-or-nothing")
    set_verbs = vm_set.add_subparsers(dest="set_verb", required=True, metavar="VERB")
    set_get = set_verbs.add_parser("get", parents=[common],
                                   help="show a set: state (PENDING, PLACED, FAILED), members, deadline, "
                                        "conditions (the shortfall while PENDING)")
    set_get.add_argument("name", metavar="SET", help="set id (cp, vmSets/cp or its full name)")
    _power_parsers(sub, common)
    get = sub.add_parser("get", parents=[common],
                         help="show a VM: state, power, addresses, bootstrap summary, conditions, recent audit")
    get.add_argument("name", metavar="NAME", help="VM id (web-1, vms/web-1 or its full name)")
    delete = sub.add_parser("delete", parents=[common], help="delete VMs (DELETING at once; --wait until gone)")
    delete.add_argument("names", nargs="+", metavar="NAME", help="VM ids (web-1, vms/web-1 or full names)")
    delete.add_argument("--etag", default="",
                        help="only if the VM is still at this etag (from `get -o json`; one NAME only)")
    delete.add_argument("--delete-disks", action="store_true",
                        help="also delete their persistent disks (default: detached and kept)")
    add_wait(delete, "they are gone")
    vm_verb = verb_maker(sub, [common], "name", "VM", "VM id (web-1, vms/web-1 or its full name)")
    for name, help_text in (("attach-disk", "attach a persistent disk to a VM (hot; its host must reach the "
                                            "disk's datastore class)"),
                            ("detach-disk", "detach a persistent disk from a VM (kept; AVAILABLE once its host "
                                            "let go of it)")):
        disk_verb = vm_verb(name, help_text)
        disk_verb.add_argument("disk", metavar="DISK", help="the disk's id (or its full name)")
        disk_verb.add_argument("--etag", default="", help="only if the VM is still at this etag")
    listing = sub.add_parser("list", parents=[common], help="list the project's VMs")
    listing.add_argument("--selector", default="", metavar="K=V,...", help="only VMs with these labels")
    watch = sub.add_parser("watch", parents=[common], help="stream changes to the project's VMs until Ctrl-C",
                           description="Print the project's VMs, then each change as it happens, until Ctrl-C.")
    watch.add_argument("--resource-version", type=int, default=0, metavar="N",
                       help="only changes after this version (default 0: the current VMs first)")
    watch.add_argument("--selector", default="", metavar="K=V,...", help="only VMs with these labels")


def _power_parsers(sub, common: argparse.ArgumentParser) -> None:
    """``vm start|stop|restart|resize|update``."""
    names = {"nargs": "+", "metavar": "NAME", "help": "VM ids (web-1, vms/web-1 or full names)"}
    etag = {"default": "", "help": "only if the VM is still at this etag (from `get -o json`; one NAME only)"}
    start = sub.add_parser("start", parents=[common], help="power VMs on (returns at once; --wait until RUNNING)")
    start.add_argument("names", **names)
    start.add_argument("--etag", **etag)
    add_wait(start, "they are RUNNING")
    stop = sub.add_parser("stop", parents=[common],
                          help="power VMs off: guest shutdown, hard after --grace (--hard: at once); "
                               "a stopped VM keeps its host and quota",
                          description="Power VMs off. By default the guest is asked to shut down and the VM is "
                                      "powered off hard if it has not after --grace; --hard powers it off at once. "
                                      "A stopped VM keeps its host and its quota; `quanta vm start` powers it on.")
    restart = sub.add_parser("restart", parents=[common],
                             help="restart VMs once: guest shutdown (hard after --grace) or --hard power cycle")
    for parser, what in ((stop, "they are STOPPED"), (restart, "they run again")):
        parser.add_argument("names", **names)
        parser.add_argument("--hard", action="store_true", help="power off at once, without a guest shutdown")
        parser.add_argument("--grace", type=duration, default=None, metavar="DURATION",
                            help="how long the guest may take to shut down before the VM is powered off hard, "
                                 "e.g. 30s, 2m (default 60s, at most 1h)")
        parser.add_argument("--etag", **etag)
        add_wait(parser, what)
    resize = sub.add_parser("resize", parents=[common],
                            help="give a VM another flavor (charged to the quota and its host at once)",
                            description="Give a VM another flavor. The project's quota and the host's room are "
                                        "charged at once (refused if either has none); the host's agent then "
                                        "reconfigures the VM, power-cycling it only where its driver must.")
    resize.add_argument("name", metavar="NAME", help="VM id (web-1, vms/web-1 or its full name)")
    resize.add_argument("flavor", metavar="FLAVOR", help="the new flavor (see `quanta flavor list`)")
    resize.add_argument("--etag", default="", help="only if the VM is still at this etag (from `get -o json`)")
    add_wait(resize, "it is in its desired power state (RUNNING with an address, or STOPPED) again")
    update = sub.add_parser("update", parents=[common], help="change a VM's labels and/or flavor",
                            description="Change a VM's labels (read, changed and written back with the etag read, "
                                        "again if another change came between) and/or its flavor (a resize).")
    update.add_argument("name", metavar="NAME", help="VM id (web-1, vms/web-1 or its full name)")
    update.add_argument("--label", action="append", default=[], type=key_value, metavar="K=V",
                        help="set a label (repeatable)")
    update.add_argument("--remove-label", action="append", default=[], metavar="K",
                        help="remove a label (repeatable; one that is not there is no error)")
    update.add_argument("--flavor", default=None, help="resize to this flavor")
    update.add_argument("--etag", default="",
                        help="only if the VM is still at this etag (default: the one read before changing labels)")
    add_wait(update, "after a resize, it is in its desired power state again")


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
    if kind == "vm" and args.verb == "create-many":
        if args.hold is not None and not args.plan:
            parser.error("--hold holds the room a --plan finds: give --plan with it")
        if args.plan and (given := [flag for flag, value in (
                ("--from-plan", args.from_plan), ("--validate-only", args.validate_only), ("--wait", args.wait),
                ("--set-id", args.set_id), ("--deadline", args.deadline is not None),
                ("--request-id", args.request_id)) if value]):
            parser.error(f"--plan creates nothing: leave out {', '.join(given)}")
        if args.from_plan:
            args.all_or_nothing = True  # a plan holds room for a set
        if not args.all_or_nothing and (args.set_id or args.deadline is not None or args.request_id):
            parser.error("--set-id, --deadline and --request-id are an --all-or-nothing set's "
                         "(each independent VM takes its own request_id in the file)")
        if args.validate_only and args.wait:
            parser.error("--validate-only creates nothing to --wait for")
    if kind == "vm" and args.verb in ("start", "stop", "restart", "delete") and args.etag and len(args.names) > 1:
        parser.error("--etag names one VM's version: give one NAME with it")
    if kind == "vm" and args.verb == "update":
        if not (args.label or args.remove_label or args.flavor):
            parser.error("nothing to change: give --label, --remove-label or --flavor")
        if both := {k for k, _ in args.label} & set(args.remove_label):
            parser.error(f"--label and --remove-label both name {', '.join(sorted(both))}")
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
        user_data = read_input(args.user_data, "--user-data") if args.user_data else None
        ignition = read_input(args.ignition, "--ignition") if args.ignition else None
        vm = client.create_vm(args.name, flavor=args.flavor, image=args.image, labels=labels,
                              request_id=args.request_id, node_selector=selector,
                              anti_affinity_group=args.anti_affinity_group, restart_policy=args.restart_policy,
                              anti_affinity_scope=args.anti_affinity_scope, affinity_group=args.affinity_group,
                              affinity_scope=args.affinity_scope, user_data=user_data, ignition=ignition,
                              metadata=dict(args.metadata), ssh_keys=ssh_keys(args.ssh_key),
                              hostname=args.hostname, power_on=not args.stopped, power_policy=args.power_policy,
                              nics=args.nic, disks=args.disk)
        if args.wait:
            goal = stopped if args.stopped else running
            with printer.progress() as progress:
                final = wait_for_vm(client, vm, lambda v: goal(v) or v.state == vm_pb2.Vm.ERROR,
                                    goal="the creation", timeout_s=args.timeout, progress=progress)
            if final is None:
                raise CliError(f"{short_name(vm.name)} was deleted before it ran")
            printer.one(final, views.VM)
            if final.state == vm_pb2.Vm.ERROR:
                raise CliError(f"{short_name(vm.name)} failed: {views.vm_reason(final) or 'ERROR'}")
        else:
            printer.one(vm, views.VM)
    elif args.verb == "create-many":
        _create_many(args, client, printer)
    elif args.verb == "set":
        printer.detail(client.get_vm_set(args.name), views.VM_SET)
    elif args.verb == "get":
        vm = client.get_vm(vm_id(args.name))
        extra: list[Section] = []
        if printer.output == "table":
            extra.append(views.audit_section(readable_audit(client, vm.name, client.tenant)))
        printer.detail(vm, views.VM, extra)
    elif args.verb == "list":
        printer.many(client.list_vms(label_selector=args.selector), views.VM)
    elif args.verb == "delete":
        _delete(args, client, printer)
    elif args.verb == "attach-disk":
        printer.one(client.attach_disk(vm_id(args.name), args.disk, etag=args.etag), views.VM)
    elif args.verb == "detach-disk":
        printer.one(client.detach_disk(vm_id(args.name), args.disk, etag=args.etag), views.VM)
    elif args.verb in ("start", "stop", "restart"):
        _power(args, client, printer)
    elif args.verb in ("resize", "update"):
        vm = _update(args, client)
        if args.wait and (args.verb == "resize" or args.flavor):
            _wait_and_show(client, printer, [vm], as_desired, "the resize", args.timeout)
        else:
            printer.one(vm, views.VM)
    elif args.verb == "watch":
        events = client.watch_vms(resource_version=args.resource_version, label_selector=args.selector)
        printer.events(((common_pb2.EventType.Name(e.type), e.vm) for e in events if e.type != common_pb2.BOOKMARK),
                       views.VM)


def _power(args, client: Client, printer: Printer) -> None:
    """``vm start|stop|restart NAME...``: each VM in turn; a failure is reported and
    the others go on (exit 1 at the end). With --wait, one watch follows them all."""
    mode = "hard" if getattr(args, "hard", False) else "soft"
    grace = getattr(args, "grace", None)

    def call(name: str) -> vm_pb2.Vm:
        if args.verb == "start":
            return client.start_vm(name, etag=args.etag)
        if args.verb == "stop":
            return client.stop_vm(name, mode=mode, grace=grace, etag=args.etag)
        return client.restart_vm(name, mode=mode, grace=grace, etag=args.etag)

    vms, failures = _each(client, [vm_id(n) for n in args.names], call)
    if vms:
        if args.wait:
            what = {"start": "the start", "stop": "the stop", "restart": "the restart"}[args.verb]
            _wait_and_show(client, printer, vms, as_desired, what, args.timeout)
        else:
            _show(printer, vms)
    if failures:
        sys.exit(1)


def _delete(args, client: Client, printer: Printer) -> None:
    """``vm delete NAME...``: each VM in turn (a failure is reported and the others go
    on; exit 1 at the end); with --wait, one watch follows them all until gone."""
    vms, failures = _each(client, [vm_id(n) for n in args.names],
                          lambda name: client.delete_vm(name, etag=args.etag, delete_disks=args.delete_disks))
    if vms and args.wait:
        with printer.progress(total=len(vms) if len(vms) > 1 else None) as progress:
            wait_for_vms(client, vms, lambda v: False, goal="the deletion", timeout_s=args.timeout,
                         progress=progress, until_gone=True)
        if printer.output in ("table", "wide"):
            for vm in vms:
                printer.text(f"{short_name(vm.name)} deleted")
        else:
            _show(printer, vms)
    elif vms:
        _show(printer, vms)
    if failures:
        sys.exit(1)


def _each(client: Client, names: Sequence[str],
          call: Callable[[str], vm_pb2.Vm]) -> tuple[list[vm_pb2.Vm], list[str]]:
    """``call(name)`` for each name. One name: its error ends the command as any
    other; several: each error is said on stderr (naming the VM) and the rest go on.
    Returns the VMs answered and the names that failed."""
    if len(names) == 1:
        return [call(names[0])], []
    vms: list[vm_pb2.Vm] = []
    failures: list[str] = []
    for name in names:
        try:
            vms.append(call(name))
        except ApiError as err:
            failures.append(name)
            text = describe(err, client.endpoint, client.context).removeprefix("error: ")
            print(f"error: vms/{name.rsplit('/', 1)[-1]}: {text}", file=sys.stderr, flush=True)
    return vms, failures


def _show(printer: Printer, vms: Sequence[vm_pb2.Vm]) -> None:
    if len(vms) == 1:
        printer.one(vms[0], views.VM)
    else:
        printer.many(vms, views.VM)


def _wait_and_show(client: Client, printer: Printer, vms: Sequence[vm_pb2.Vm], done: Callable[[vm_pb2.Vm], bool],
                   goal: str, timeout_s: float) -> None:
    """Follow ``vms`` until ``done``; print them as they ended; CliError if one went
    to ERROR or was deleted meanwhile."""
    with printer.progress(total=len(vms) if len(vms) > 1 else None) as progress:
        final = wait_for_vms(client, vms, done, goal=goal, timeout_s=timeout_s, progress=progress)
    shown = [vm for vm in final.values() if vm is not None]
    if shown:
        _show(printer, shown)
    gone = [short_name(name) for name, vm in final.items() if vm is None]
    broken = [vm for vm in shown if vm.state in (vm_pb2.Vm.ERROR, vm_pb2.Vm.DELETING)]
    problems = [f"{name} was deleted" for name in gone]
    problems += [f"{short_name(vm.name)} is {views.vm_state(vm)}"
                 + (f": {views.vm_reason(vm)}" if views.vm_reason(vm) else "") for vm in broken]
    if problems:
        raise CliError("; ".join(problems))


def _update(args, client: Client) -> vm_pb2.Vm:
    """``vm resize`` and ``vm update``. New labels are computed from the VM as read
    and written with its etag (or --etag); without --etag, a change that came
    between is read again and merged, a few times."""
    name = vm_id(args.name)
    if args.verb == "resize":
        return client.resize_vm(name, args.flavor, etag=args.etag)
    if not (args.label or args.remove_label):
        return client.update_vm(name, flavor=args.flavor, etag=args.etag)
    attempts = 5
    for attempt in range(attempts):
        current = client.get_vm(name)
        labels = merged_labels(current.labels, args.label, args.remove_label)
        try:
            return client.update_vm(name, labels=labels, flavor=args.flavor, etag=args.etag or current.etag)
        except Aborted as err:
            if args.etag or err.reason not in ("ETAG_MISMATCH", "CONFLICT") or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _create_many(args, client: Client, printer: Printer) -> None:
    """``vm create-many -f FILE``: one CreateVms; with --wait one watch follows every
    VM made; then each VM's outcome (a refusal: its code, reason and message). Exit 1
    when a VM was refused (INDEPENDENT; an all-or-nothing refusal fails the call) or
    the wait failed."""
    try:
        wanted = manifest.load(args.file)
    except manifest.ManifestError as err:
        raise CliError(f"{args.file}: {err}", exit_code=2) from None
    except OSError as err:
        raise CliError(f"-f: cannot read {args.file}: {err.strerror or err}", exit_code=2) from None
    if (args.all_or_nothing or args.plan) and (named := [vm["vm_id"] for vm in wanted.vms if vm.get("request_id")]):
        raise CliError(f"{args.file}: request_id ({', '.join(named)}): a set's members take none; "
                       + ("a plan's neither" if args.plan else "give the set's with --request-id"), exit_code=2)
    if args.plan:
        _plan(args, client, printer, wanted.vms)
        return
    try:
        created = client.create_vms(wanted.vms, all_or_nothing=args.all_or_nothing, set_id=args.set_id,
                                    deadline=args.deadline, validate_only=args.validate_only,
                                    request_id=args.request_id, plan=args.from_plan)
    except (TypeError, ValueError) as err:  # a VM the SDK cannot build (e.g. an unknown enum value)
        raise CliError(f"{args.file}: {err}", exit_code=2) from None
    response = vm_pb2.CreateVmsResponse()
    response.CopyFrom(created.response)
    for result, outcome in zip(response.results, created.outcomes, strict=False):
        if not outcome.ok and outcome.name:
            result.vm.name = outcome.name  # which VM was refused: the only field a refused one shows
    problem = ""
    if args.wait and created.vms:
        powered_off = {client.vm_name(name) for name in wanted.stopped}

        def done(vm: vm_pb2.Vm) -> bool:
            return stopped(vm) if vm.name in powered_off else running(vm)

        set_name = created.set.name if created.set is not None else ""
        if set_name and printer.output in ("table", "wide"):
            printer.text(f"{short_name(set_name)}: {describe_set(response.set)}")
        with printer.progress(total=len(created.vms)) as progress:
            final = wait_for_members(client, created.vms, done, set_name=set_name, timeout_s=args.timeout,
                                     progress=progress)
        for result in response.results:
            if result.code == 0 and result.vm.name in final:
                vm = final[result.vm.name]
                if vm is not None:
                    result.vm.CopyFrom(vm)
        gone = [short_name(n) for n, vm in final.items() if vm is None]
        broken = [vm for vm in final.values() if vm is not None and failed(vm)]
        problem = "; ".join([f"{name} was deleted" for name in gone]
                            + [f"{short_name(vm.name)} is {views.vm_state(vm)}"
                               + (f": {views.vm_reason(vm)}" if views.vm_reason(vm) else "") for vm in broken])
        if set_name:
            response.set.CopyFrom(client.get_vm_set(set_name))
    _show_created(printer, response, validate_only=args.validate_only)
    refused = [r for r in response.results if r.code != 0]
    if refused:
        raise CliError(f"{plural(len(refused), 'VM')} of {len(response.results)} refused"
                       + (f"; {problem}" if problem else ""))
    if problem:
        raise CliError(problem)


def _plan(args, client: Client, printer: Printer, vms: list[dict[str, Any]]) -> None:
    """``vm create-many -f FILE --plan [--hold D]``: one PlanVms; each VM's host or why
    it fits nowhere, whether the set fits, the quota headroom and (held) the plan's
    name and end, in the ``-o`` format (json/yaml: the answer itself; name: the held
    plan). Exit 1 when the set does not fit (nothing held then)."""
    try:
        planned = client.plan_vms(vms, hold=args.hold)
    except (TypeError, ValueError) as err:
        raise CliError(f"{args.file}: {err}", exit_code=2) from None
    if printer.output in ("json", "yaml"):
        printer.one(planned.response, views.PLACEMENT)
    elif printer.output == "name":
        if planned.held:
            printer.text(short_name(planned.plan))
    else:
        printer.many(planned.placements, views.PLACEMENT)
        for line in views.plan_summary(planned):
            printer.text(line)
        if planned.held:
            printer.note(f"create the set on it before the hold ends: quanta vm create-many -f {args.file} "
                         f"--from-plan {last_id(planned.plan)} [--wait]")
    if not planned.fits:
        raise CliError(f"the set does not fit: {views.why_not(planned)}"
                       + ("; nothing was held" if args.hold else ""))


def _show_created(printer: Printer, response: vm_pb2.CreateVmsResponse, *, validate_only: bool) -> None:
    """Each VM's outcome (and the set's state) in the ``-o`` format: the response
    itself for json/yaml, the VMs made for name, a table otherwise."""
    if printer.output in ("json", "yaml"):
        printer.one(response, views.CREATE_RESULT)
        return
    if printer.output == "name":
        for result in response.results:
            if result.code == 0 and result.vm.name:
                printer.text(short_name(result.vm.name))
        return
    if validate_only:  # a dry run: no set, no VM, no state to show
        made = sum(1 for r in response.results if r.code == 0)
        printer.text(f"validate only: nothing was created ({made} of {plural(len(response.results), 'VM')} "
                     "would be)")
        printer.many(response.results, views.VALIDATED_RESULT)
        return
    if response.HasField("set"):
        printer.text(f"{short_name(response.set.name)}: {describe_set(response.set)}")
    printer.many(response.results, views.CREATE_RESULT)
