"""The file ``quanta vm create-many -f FILE`` reads: VMs to create in one call.

    defaults:                     # optional: every VM's fields unless it sets them
      flavor: small
      image: ubuntu
      labels: {cluster: demo}     # maps (labels, node_selector, metadata) are merged, the VM's winning
    vms:
      - name: cp                  # with count: cp-1, cp-2, cp-3
        count: 3
        labels: {role: control-plane}
        anti_affinity_group: demo-cp
        anti_affinity_scope: ZONE
        user_data_file: cp.yaml   # paths are relative to this file
      - name: worker-1
        user_data: |              # or inline
          #cloud-config
          ...

A VM's fields are the flags of ``quanta vm create``, spelt with ``_`` or ``-``:
``name``, ``flavor``, ``image``, ``labels``, ``node_selector``,
``anti_affinity_group``, ``anti_affinity_scope``, ``affinity_group``,
``affinity_scope``, ``restart_policy``, ``user_data`` / ``user_data_file``,
``ignition`` / ``ignition_file``, ``metadata``, ``ssh_keys`` (public keys) /
``ssh_key_files``, ``hostname``, ``stopped``, ``power_policy``, ``request_id``
(independent VMs only: a set's members take the set's); and ``count``.
Pure: files are read through the ``read`` function given.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

#: Fields whose value is a map of strings (merged with the defaults').
MAPS = ("labels", "node_selector", "metadata")
#: Fields whose value is a string, passed to create_vms as they are.
STRINGS = ("flavor", "image", "anti_affinity_group", "anti_affinity_scope", "affinity_group", "affinity_scope",
           "restart_policy", "hostname", "power_policy", "request_id")
#: Bootstrap data: inline, or a file relative to the manifest (one of each pair).
DATA = {"user_data": "user_data_file", "ignition": "ignition_file"}
FIELDS = frozenset({"name", "count", "stopped", "ssh_keys", "ssh_key_files", *MAPS, *STRINGS, *DATA,
                    *DATA.values()})
#: Fields a defaults block may not set: they name one VM.
PER_VM = frozenset({"name", "count", "request_id", "hostname"})
#: At most this many VMs in one file (one CreateVms call).
MAX_VMS = 1000
MAX_COUNT = 1000


class ManifestError(ValueError):
    """The file is not a valid list of VMs; the message says where (``vms[2] (cp)``)."""


@dataclass(frozen=True)
class Manifest:
    """The VMs of a file, each as the keyword arguments of ``create_vms`` (``vm_id``
    included); ``stopped`` names the VMs created powered off (a --wait waits for
    them to be STOPPED)."""

    vms: list[dict[str, Any]] = field(repr=False)  # they may hold bootstrap data: never in a repr
    stopped: frozenset[str] = frozenset()

    @property
    def names(self) -> list[str]:
        return [vm["vm_id"] for vm in self.vms]


def load(path: str, read: Callable[[str], bytes] | None = None) -> Manifest:
    """The manifest in the file ``path`` (ManifestError for a bad one, OSError for
    an unreadable file); ``read(path)`` reads files (default: from disk)."""
    reader = read or (lambda p: pathlib.Path(p).expanduser().read_bytes())
    return parse(reader(path).decode("utf-8", errors="replace"), str(pathlib.Path(path).expanduser().parent),
                 reader)


def parse(text: str, base_dir: str, read: Callable[[str], bytes]) -> Manifest:
    """The manifest in ``text``; file fields are read with ``read`` relative to
    ``base_dir`` (absolute paths and ``~`` as they are). ManifestError naming the
    VM and field for anything wrong (never quoting bootstrap data)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ManifestError(f"not YAML: {err}") from None
    if isinstance(doc, list):
        doc = {"vms": doc}
    if not isinstance(doc, dict):
        raise ManifestError("expected a mapping with a vms: list (and optionally defaults:)")
    unknown = sorted(set(doc) - {"vms", "defaults"})
    if unknown:
        raise ManifestError(f"unknown top-level key(s) {', '.join(map(str, unknown))}; expected vms and defaults")
    defaults = _fields(doc.get("defaults") or {}, "defaults")
    if bad := sorted(PER_VM & set(defaults)):
        raise ManifestError(f"defaults: {', '.join(bad)} name(s) one VM; set them on each VM")
    entries = doc.get("vms")
    if not isinstance(entries, list) or not entries:
        raise ManifestError("vms: expected a non-empty list of VMs")
    vms: list[dict[str, Any]] = []
    stopped: set[str] = set()
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"vms[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" ({entry['name']})"
        raw = _fields(entry, where)
        merged = _merge(defaults, raw)
        for name, fields in _expand(merged, where):
            here = f"{where} {name}" if name != merged.get("name") else where
            if name in seen:
                raise ManifestError(f"{here}: name {name!r} is also {seen[name]}'s")
            seen[name] = here
            vm, off = _vm(name, fields, here, base_dir, read)
            vms.append(vm)
            if off:
                stopped.add(name)
            if len(vms) > MAX_VMS:
                raise ManifestError(f"more than {MAX_VMS} VMs: one call takes at most {MAX_VMS}")
    return Manifest(vms, frozenset(stopped))


def _fields(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping of fields, not {type(entry).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in entry.items()}
    unknown = sorted(set(out) - FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    return out


def _merge(defaults: Mapping[str, Any], vm: Mapping[str, Any]) -> dict[str, Any]:
    """``vm`` over ``defaults``: maps merged key by key; the VM's bootstrap data
    (user data or ignition, inline or a file) replaces all of the defaults'."""
    out = dict(defaults)
    data_keys = {*DATA, *DATA.values()}
    if data_keys & set(vm):
        for key in data_keys:
            out.pop(key, None)
    if "ssh_keys" in vm or "ssh_key_files" in vm:
        out.pop("ssh_keys", None)
        out.pop("ssh_key_files", None)
    for key, value in vm.items():
        if key in MAPS and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _expand(fields: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: name: required (a VM id such as web-1)")
    count = fields.get("count")
    if count is None:
        return [(name, fields)]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ManifestError(f"{where}: count: expected a whole number from 1 to {MAX_COUNT}, got {count!r}")
    if "request_id" in fields or "hostname" in fields:
        raise ManifestError(f"{where}: request_id and hostname name one VM: not with count")
    return [(f"{name}-{i}", fields) for i in range(1, count + 1)]


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ManifestError(f"{where}: {key}: expected a string, got {type(value).__name__}")
    return str(value)


def _vm(name: str, fields: Mapping[str, Any], where: str, base_dir: str,
        read: Callable[[str], bytes]) -> tuple[dict[str, Any], bool]:
    vm: dict[str, Any] = {"vm_id": name}
    for key in ("flavor", "image"):
        if key not in fields:
            raise ManifestError(f"{where}: {key}: required (here or in defaults)")
    for key in STRINGS:
        if key in fields:
            vm[key] = _text(fields[key], where, key)
    for key in ("anti_affinity_scope", "affinity_scope", "restart_policy", "power_policy"):
        if key in vm:
            vm[key] = vm[key].upper()
    for key in MAPS:
        if key in fields:
            value = fields[key]
            if not isinstance(value, dict):
                raise ManifestError(f"{where}: {key}: expected a mapping of KEY: VALUE")
            vm[key] = {str(k): _text(v, where, f"{key}.{k}") for k, v in value.items()}
    for inline, path in DATA.items():
        if inline in fields and path in fields:
            raise ManifestError(f"{where}: give {inline} or {path}, not both")
        if inline in fields:
            vm[inline] = _text(fields[inline], where, inline).encode()
        elif path in fields:
            vm[inline] = _read(read, base_dir, _text(fields[path], where, path), where, path)
    if "user_data" in vm and "ignition" in vm:
        raise ManifestError(f"{where}: give user data (cloud-init) or ignition, not both")
    keys: list[str] = []
    if "ssh_keys" in fields:
        value = fields["ssh_keys"]
        if not isinstance(value, list):
            raise ManifestError(f"{where}: ssh_keys: expected a list of public keys")
        keys += [_text(k, where, "ssh_keys").strip() for k in value]
    if "ssh_key_files" in fields:
        value = fields["ssh_key_files"]
        if not isinstance(value, list):
            raise ManifestError(f"{where}: ssh_key_files: expected a list of paths")
        for item in value:
            text = _read(read, base_dir, _text(item, where, "ssh_key_files"), where, "ssh_key_files").decode(
                "utf-8", errors="replace")
            keys += [line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
    if keys:
        vm["ssh_keys"] = keys
    stopped = fields.get("stopped", False)
    if not isinstance(stopped, bool):
        raise ManifestError(f"{where}: stopped: expected true or false")
    if stopped:
        vm["power_on"] = False
    return vm, stopped


def _read(read: Callable[[str], bytes], base_dir: str, path: str, where: str, key: str) -> bytes:
    full = pathlib.Path(path).expanduser()
    if not full.is_absolute():
        full = pathlib.Path(base_dir) / full
    try:
        return read(str(full))
    except OSError as err:
        raise ManifestError(f"{where}: {key}: cannot read {full}: {err.strerror or err}") from None
