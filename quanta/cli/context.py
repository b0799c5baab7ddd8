"""quanta context list|current|use|set|delete: named places to talk to, in one config file.

A context holds an endpoint, a token (or a file holding one), a tenant, a project
and a TLS CA; the CLI and SDK use the current one unless told otherwise. Each
setting resolves on its own: flag > environment ($QUANTA_ENDPOINT, $QUANTA_TOKEN,
$QUANTA_TENANT, $QUANTA_PROJECT, $QUANTA_TLS_CA) > context (--context, else
$QUANTA_CONTEXT, else the current one) > the system `quanta up` runs by default.
`quanta up --name NAME` adds the context NAME and removes it when it stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from quanta import config
from quanta.errors import ConfigError

_FIELDS = ("endpoint", "token", "token_file", "tenant", "project", "tls_ca")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta context", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{list,current,use,set,delete}")
    listing = sub.add_parser("list", help="the contexts; * marks the current one")
    listing.add_argument("-o", "--output", choices=("table", "json", "name"), default="table",
                         help="table (default), json (tokens left out), or name: one name a line")
    sub.add_parser("current", help="print the current context's name")
    use = sub.add_parser("use", help="make a context the current one")
    use.add_argument("name", help="the context's name")
    setting = sub.add_parser("set", help="add a context or change the settings given (\"\" clears one)",
                             description="Add the context NAME, or change the settings given; a setting "
                                         "given as \"\" is cleared, others are kept.")
    setting.add_argument("name", help="the context's name (letters, digits, '.', '_', '-')")
    setting.add_argument("--endpoint", help="the API's address, HOST:PORT")
    secret = setting.add_mutually_exclusive_group()
    secret.add_argument("--token", help="a bearer token (stored in the config file, mode 0600)")
    secret.add_argument("--token-file", help="a file holding the bearer token, read at each use")
    setting.add_argument("--tenant", help="the tenant for calls that take one (default: default)")
    setting.add_argument("--project", help="the project for VM calls (default: default)")
    setting.add_argument("--tls-ca", help="a PEM file to verify the API's TLS certificate with")
    setting.add_argument("--use", action="store_true", help="also make it the current context")
    delete = sub.add_parser("delete", help="remove a context (if current, no context is current after)")
    delete.add_argument("name", help="the context's name")
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def _run(args: argparse.Namespace) -> None:
    path = config.config_path()
    if args.verb == "list":
        cfg = config.load_config(path)
        if not cfg.contexts and args.output == "table":
            print(f"no contexts in {path}: `quanta up` adds one for the system it starts, "
                  f"`quanta context set NAME --endpoint HOST:PORT` adds another", file=sys.stderr)
            return
        _print_list(cfg, args.output)
    elif args.verb == "current":
        current = config.load_config(path).current
        if not current:
            raise ConfigError(f"no current context in {path}; `quanta context use NAME` sets one",
                              "CONTEXT_NOT_FOUND")
        print(current)
    elif args.verb == "use":
        with config.editing_config(path) as box:
            box[0] = box[0].using(args.name)
        print(f"current context: {args.name}")
    elif args.verb == "set":
        config.check_name(args.name)
        changes = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
        if "token" in changes:
            changes["token_file"] = ""  # one or the other
        elif "token_file" in changes:
            changes["token"] = ""
        with config.editing_config(path) as box:
            existed = args.name in box[0].contexts
            old = box[0].contexts.get(args.name, config.Context(name=args.name))
            cfg = box[0].with_context(dataclasses.replace(old, **changes))
            box[0] = cfg.using(args.name) if args.use else cfg
        print(f"context {args.name} {'changed' if existed else 'added'}{' (current)' if args.use else ''}")
    elif args.verb == "delete":
        with config.editing_config(path) as box:
            box[0].get(args.name, path)
            box[0] = box[0].without_context(args.name)
        print(f"context {args.name} deleted")


def _print_list(cfg: config.Config, output: str) -> None:
    contexts = [cfg.contexts[name] for name in sorted(cfg.contexts)]
    if output == "name":
        for context in contexts:
            print(context.name)
        return
    if output == "json":
        print(json.dumps([{"name": c.name, "current": c.name == cfg.current, "endpoint": c.endpoint,
                           "tenant": c.tenant, "project": c.project, "tls_ca": c.tls_ca,
                           "token": "set" if c.token else ("file " + c.token_file if c.token_file else ""),
                           "system": c.system} for c in contexts], indent=2))
        return
    rows = [("CURRENT", "NAME", "ENDPOINT", "TENANT", "PROJECT", "AUTH", "FROM")]
    for c in contexts:
        auth = "token" if c.token else (f"file {c.token_file}" if c.token_file else "-")
        rows.append(("*" if c.name == cfg.current else "", c.name, c.endpoint or "-", c.tenant or "-",
                     c.project or "-", auth, f"quanta up --name {c.system}" if c.system else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
