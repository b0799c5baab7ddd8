"""Where the CLI and SDK find Quanta: named contexts in one config file, the
environment, and the systems ``quanta up`` runs on this machine.

The config file is ``$QUANTA_CONFIG``, else ``$XDG_CONFIG_HOME/quanta/config.yaml``
(``~/.config/quanta/config.yaml``). It may hold tokens, so it is written with mode
0600, whole (a temporary file renamed over it) and under a lock, so two ``quanta
up`` adding their contexts at once both land::

    current-context: lab
    contexts:
      lab:
        endpoint: quanta.lab.example:7000
        token-file: ~/.quanta/lab.token     # or token: <bearer token>
        tenant: acme
        project: web
        tls-ca: ~/.quanta/lab-ca.pem
      local:                                # added by `quanta up`, removed when it stops
        endpoint: 127.0.0.1:41235
        token: eyJ...
        system: local

Each setting is resolved on its own, first found wins:

1. the argument (a CLI flag: ``--endpoint``, ``--token``, ``--tenant``, ``--project``,
   ``--tls-ca``);
2. the environment: ``QUANTA_ENDPOINT``, ``QUANTA_TOKEN``, ``QUANTA_TENANT``,
   ``QUANTA_PROJECT``, ``QUANTA_TLS_CA``;
3. the context: the one named by ``--context``, else ``$QUANTA_CONTEXT``, else the
   file's ``current-context`` (a named context that does not exist is an error);
4. ``quanta up``'s default: the system it started under the default name ``local``
   (its endpoint, and its admin token when the endpoint resolved is that system's);
5. built in: endpoint ``127.0.0.1:7000``, tenant and project ``default``, no token,
   plaintext.

Each ``quanta up --name NAME`` records where its processes are in its own state
file, ``$XDG_STATE_HOME/quanta/NAME.json`` (``~/.local/state``), so systems
started side by side do not overwrite each other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from quanta.errors import ConfigError

DEFAULT_ENDPOINT = "127.0.0.1:7000"
#: The system name ``quanta up`` uses without ``--name``; its state is "quanta up's default".
DEFAULT_SYSTEM = "local"
DEFAULT_TENANT = "default"
DEFAULT_PROJECT = "default"

#: The environment variable for each setting.
ENV = {"endpoint": "QUANTA_ENDPOINT", "token": "QUANTA_TOKEN", "tenant": "QUANTA_TENANT",
       "project": "QUANTA_PROJECT", "tls_ca": "QUANTA_TLS_CA"}
CONTEXT_ENV = "QUANTA_CONTEXT"
CONFIG_ENV = "QUANTA_CONFIG"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEADER = "# Quanta contexts (`quanta context --help`). May hold bearer tokens: keep it private (mode 0600).\n"


def check_name(name: str, what: str = "context") -> str:
    """``name`` if it is a valid context or system name, else ConfigError."""
    if not _NAME.match(name):
        raise ConfigError(f"{what} name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit", "NAME_INVALID")
    return name


@dataclass(frozen=True, slots=True)
class Context:
    """One named place to talk to: fields left "" are not set by this context.
    ``system``: the ``quanta up`` system that added it (and removes it), or ""."""

    name: str
    endpoint: str = ""
    token: str = field(default="", repr=False)  # a bearer token: never in a repr, log or traceback
    token_file: str = ""
    tenant: str = ""
    project: str = ""
    tls_ca: str = ""
    system: str = ""

    #: The file's keys for the fields (YAML style: dashes).
    KEYS = ("endpoint", "token", "token-file", "tenant", "project", "tls-ca", "system")

    def to_yaml(self) -> dict[str, str]:
        return {key: value for key in self.KEYS if (value := getattr(self, key.replace("-", "_")))}

    @classmethod
    def from_yaml(cls, name: str, data: Any, path: pathlib.Path) -> Context:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: context {name!r} must be a mapping of settings")
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"{path}: context {name!r} has unknown settings {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(cls.KEYS)})")
        return cls(name=name, **{key.replace("-", "_"): str(value) for key, value in data.items()
                                 if value is not None})


@dataclass(frozen=True, slots=True)
class Config:
    """The config file's content: the contexts by name and the current one ("" if none)."""

    contexts: dict[str, Context] = field(default_factory=dict)
    current: str = ""

    def get(self, name: str, path: pathlib.Path | None = None) -> Context:
        """The context ``name``; ConfigError CONTEXT_NOT_FOUND (listing the known ones) if absent."""
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            where = f" in {path}" if path else ""
            raise ConfigError(f"context {name!r} not found{where} (known: {known}); "
                              f"`quanta context set {name} --endpoint HOST:PORT` adds it",
                              "CONTEXT_NOT_FOUND") from None

    def with_context(self, context: Context) -> Config:
        return dataclasses.replace(self, contexts={**self.contexts, context.name: context})

    def without_context(self, name: str) -> Config:
        contexts = {n: c for n, c in self.contexts.items() if n != name}
        return Config(contexts, "" if self.current == name else self.current)

    def using(self, name: str) -> Config:
        self.get(name)
        return dataclasses.replace(self, current=name)

    def to_yaml(self) -> str:
        data: dict[str, Any] = {}
        if self.current:
            data["current-context"] = self.current
        data["contexts"] = {name: self.contexts[name].to_yaml() for name in sorted(self.contexts)}
        return _HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    @classmethod
    def from_yaml(cls, text: str, path: pathlib.Path) -> Config:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if data is None:
            return cls()
        if not isinstance(data, dict) or not isinstance(data.get("contexts") or {}, dict):
            raise ConfigError(f"{path}: expected `current-context:` and a `contexts:` mapping")
        unknown = sorted(set(data) - {"current-context", "contexts"})
        if unknown:
            raise ConfigError(f"{path}: unknown keys {', '.join(map(repr, unknown))}")
        contexts = {str(name): Context.from_yaml(str(name), value, path)
                    for name, value in (data.get("contexts") or {}).items()}
        return cls(contexts, str(data.get("current-context") or ""))


# --- resolution (pure) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What a client uses, resolved. ``token_file`` is set when the token is to be
    read from that file (the context named a token-file and nothing gave a token);
    ``context`` is the context's name (None: none applied); ``sources`` says where
    each setting came from ("argument", "$QUANTA_...", "context NAME",
    "quanta up (local)", "default")."""

    endpoint: str
    token: str = field(repr=False)  # a bearer token: never in a repr, log or traceback
    tenant: str
    project: str
    tls_ca: str
    context: str | None
    token_file: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)


def resolve(
    *,
    arguments: Mapping[str, str | None],
    env: Mapping[str, str],
    config: Config,
    local_state: Mapping[str, Any] | None,
    context: str | None = None,
    config_path: pathlib.Path | None = None,
) -> Settings:
    """The settings by the order in this module's docstring. ``arguments``: endpoint,
    token, tenant, project, tls_ca as given (None or "": not given); ``context``: the
    context named by argument; ``local_state``: what ``quanta up`` recorded for its
    default system (None if it is not running). Pure; raises ConfigError for a named
    context that does not exist."""
    name = context or env.get(CONTEXT_ENV) or config.current or None
    chosen = config.get(name, config_path) if name else None
    state = local_state or {}
    builtin = {"endpoint": DEFAULT_ENDPOINT, "token": "", "tenant": DEFAULT_TENANT, "project": DEFAULT_PROJECT,
               "tls_ca": ""}
    from_state = {"endpoint": str(state.get("endpoint") or ""), "token": str(state.get("admin_token") or "")}
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key, default in builtin.items():
        candidates: tuple[tuple[str, str], ...] = (
            ("argument", arguments.get(key) or ""),
            (f"${ENV[key]}", env.get(ENV[key], "")),
            (f"context {name}", getattr(chosen, key) if chosen else ""),
            (f"quanta up ({DEFAULT_SYSTEM})", from_state.get(key, "")))
        if key == "token" and values["endpoint"] != from_state["endpoint"]:
            candidates = candidates[:3]  # the local admin token goes to the local system only
        sources[key], values[key] = next(((s, v) for s, v in candidates if v), ("default", default))
    token_file = ""
    if chosen and chosen.token_file and sources["token"] in (f"quanta up ({DEFAULT_SYSTEM})", "default"):
        # The context's token-file ranks where its token would: after arguments and the environment.
        token_file, values["token"], sources["token"] = chosen.token_file, "", f"context {name}"
    return Settings(**values, context=name if chosen else None, token_file=token_file, sources=sources)


# --- files ----------------------------------------------------------------------------


def config_path(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """``$QUANTA_CONFIG``, else ``$XDG_CONFIG_HOME/quanta/config.yaml`` (~/.config)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return pathlib.Path(env[CONFIG_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return pathlib.Path(base) / "quanta" / "config.yaml"


def load_config(path: pathlib.Path | None = None) -> Config:
    """The config file's content (empty if there is no file); ConfigError if malformed."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}", "FILE_UNREADABLE") from None
    return Config.from_yaml(text, path)


@contextlib.contextmanager
def editing_config(path: pathlib.Path | None = None) -> Iterator[list[Config]]:
    """Read-modify-write the config file under an exclusive lock::

        with editing_config() as box:
            box[0] = box[0].with_context(...)

    The new content (``box[0]``) is written on a clean exit, atomically, mode 0600;
    an exception leaves the file as it was."""
    import fcntl  # POSIX only, like `quanta up`

    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        box = [load_config(path)]
        yield box
        _write_private(path, box[0].to_yaml())


def _write_private(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step, readable by its owner only."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace dropped); ConfigError if unreadable."""
    try:
        return pathlib.Path(path).expanduser().read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror}", "FILE_UNREADABLE") from None


# --- the systems `quanta up` runs -----------------------------------------------------


def state_dir(env: Mapping[str, str] | None = None) -> pathlib.Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "quanta"


def local_state_path(system: str = DEFAULT_SYSTEM) -> pathlib.Path:
    """Where ``quanta up --name system`` records its endpoint, etcd, pids and admin
    token (``local.json`` for the default system)."""
    return state_dir() / f"{check_name(system, 'system')}.json"


def local_state(system: str = DEFAULT_SYSTEM) -> dict[str, Any] | None:
    """What the running ``quanta up --name system`` recorded, or None if it is not
    running (no state file, or an unreadable one)."""
    try:
        data = json.loads(local_state_path(system).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_local_state(system: str, state: Mapping[str, Any]) -> pathlib.Path:
    """Record ``state`` for ``system`` (mode 0600: it holds the admin token)."""
    path = local_state_path(system)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps(state, indent=2))
    return path


def settings(
    *,
    endpoint: str | None = None,
    token: str | None = None,
    tenant: str | None = None,
    project: str | None = None,
    tls_ca: str | None = None,
    context: str | None = None,
) -> Settings:
    """The settings for a client from these arguments, the environment, the config
    file and ``quanta up``'s default system, in the documented order; a token file
    named by the context is read here. Raises ConfigError."""
    path = config_path()
    resolved = resolve(arguments={"endpoint": endpoint, "token": token, "tenant": tenant, "project": project,
                                  "tls_ca": tls_ca},
                       env=os.environ, config=load_config(path), local_state=local_state(), context=context,
                       config_path=path)
    if resolved.token_file:
        resolved = dataclasses.replace(resolved, token=read_token_file(resolved.token_file))
    return resolved


def system_state(context: str | None = None) -> dict[str, Any] | None:
    """The state of the ``quanta up`` system behind ``context`` (default: the one
    resolved as the SDK would), else of the default system; None if none runs. For
    tools that need more than the API (its etcd, logs)."""
    path = config_path()
    config = load_config(path)
    name = context or os.environ.get(CONTEXT_ENV) or config.current
    if name:
        system = config.get(name, path).system
        if system:
            return local_state(system)
    return local_state()


def default_etcd() -> str:
    """The etcd an operator command (``quanta scheduler shards``, ``quanta backup
    create``) talks to when not told: $QUANTA_ETCD, else the etcd of the ``quanta up``
    system behind the context in use, else etcd's own default address."""
    if os.environ.get("QUANTA_ETCD"):
        return os.environ["QUANTA_ETCD"]
    try:
        state = system_state()
    except ConfigError:
        state = None
    return str((state or {}).get("etcd") or "http://127.0.0.1:2379")
