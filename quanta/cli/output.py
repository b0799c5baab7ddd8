"""How the CLI prints: one layer for every resource and every ``-o`` format.

Formats (``-o``):

- ``table`` (default): a header and aligned columns, sized to what is printed;
  on a terminal wrapped to its width and coloured, piped plain with no trailing
  spaces (colour only on a TTY, and never with ``NO_COLOR`` set);
- ``wide``: ``table`` with more columns;
- ``json``: the API's messages in protobuf's canonical JSON mapping with the
  proto field names as the API defines them (``vm_count``, ``create_time``, not
  ``vmCount``): int64 values as strings, enums by name, timestamps in RFC 3339,
  fields at their default value left out. A listing is one JSON array; ``watch``
  prints one compact object per line;
- ``yaml``: the same documents in YAML (``watch``: one document per event);
- ``name``: one ``collection/id`` per line (``vms/web-1``, ``hosts/esx-1``), which
  the commands accept back as NAME.

Progress of a ``--wait`` goes to stderr as a live line (a bar for a set) on a
terminal; when stderr is not a terminal, as one plain line per change, to stdout
for ``table``/``wide`` (as ``host drain --wait`` always did) and to stderr for the
structured formats, so that stdout stays one document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml
from google.protobuf.json_format import MessageToDict
from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "wide", "json", "yaml", "name")
STRUCTURED = ("json", "yaml", "name")

# Wide enough that piped output never wraps; the lines are stripped of padding.
_PIPED_WIDTH = 4096

# Colours of states (and condition statuses) on a terminal; others are plain.
STATE_STYLES = {
    "RUNNING": "green", "READY": "green", "True": "green",
    "PENDING": "yellow", "SCHEDULED": "yellow", "CREATING": "yellow", "DRAINING": "yellow", "MISSING": "yellow",
    # VM sets, and the outcome of each VM of a create-many (a refusal: its gRPC code)
    "PLACED": "green", "OK": "green", "FAILED": "red", "RESOURCE_EXHAUSTED": "red", "INVALID_ARGUMENT": "red",
    "ALREADY_EXISTS": "red", "FAILED_PRECONDITION": "red", "NOT_FOUND": "red", "PERMISSION_DENIED": "red",
    "ERROR": "red", "DEAD": "red", "False": "red",
    "DELETING": "dim", "STOPPED": "dim", "DRAINED": "dim",
    # persistent disks
    "AVAILABLE": "green", "ATTACHED": "green", "DETACHING": "yellow",
}


#: Fields shown even at their default (proto's JSON omits them), per message type,
#: in a message that is one (a VM with a uid; not a refused create's name alone):
#: a VM says ``reconciling: false`` once a change is done, not nothing.
ALWAYS_SHOWN: dict[str, tuple[str, ...]] = {"quanta.v1.Vm": ("reconciling",)}


def to_dict(message: Any) -> dict[str, Any]:
    """A message as the API's JSON (proto field names, canonical mapping otherwise),
    with the :data:`ALWAYS_SHOWN` fields of it and of the messages it holds."""
    return _with_always_shown(message, MessageToDict(message, preserving_proto_field_name=True))


def _with_always_shown(message: Any, doc: dict[str, Any]) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    wanted = ALWAYS_SHOWN.get(descriptor.full_name, ()) if doc.get("uid") else ()
    if any(name not in doc for name in wanted):
        # Put each in field-number order among those present (as MessageToDict orders them).
        shown = {}
        for field in descriptor.fields:
            if field.name in doc:
                shown[field.name] = doc[field.name]
            elif field.name in wanted:
                shown[field.name] = getattr(message, field.name)
        doc = shown
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry or field.name not in doc:
            continue
        if isinstance(doc[field.name], list):
            doc[field.name] = [_with_always_shown(m, d) for m, d in zip(value, doc[field.name], strict=True)]
        elif isinstance(doc[field.name], dict):
            doc[field.name] = _with_always_shown(value, doc[field.name])
    return doc


def short_name(name: str) -> str:
    """``tenants/t/projects/p/vms/web-1`` → ``vms/web-1``: the last collection and id
    of a resource name (kubectl's ``-o name``); a singleton (``.../quota``) keeps its
    full name, which is what the commands take."""
    parts = name.split("/")
    if len(parts) >= 2 and len(parts) % 2 == 0:
        return "/".join(parts[-2:])
    return name


def last_id(name: str) -> str:
    """The id at the end of a resource name (``.../vms/web-1`` → ``web-1``)."""
    return name.rsplit("/", 1)[-1]


def plural(count: int, noun: str, many: str = "") -> str:
    """``plural(1, "VM")`` → ``"1 VM"``, ``plural(3, "VM")`` → ``"3 VMs"`` (``many``:
    an irregular plural)."""
    return f"{count} {noun}" if count == 1 else f"{count} {many or noun + 's'}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table: its header and how to get the cell from a message.
    ``wide``: only with ``-o wide``; ``narrow``: only without it (a column that a
    wide one replaces); ``coloured``: the cell is styled by :data:`STATE_STYLES`
    (on a terminal)."""

    header: str
    value: Callable[[Any], str]
    wide: bool = False
    coloured: bool = False
    narrow: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """Part of a detail view: ``fields`` as ``label: value`` lines, or a table of
    ``rows`` under ``headers`` (``empty`` is printed when there are no rows)."""

    title: str = ""
    fields: Sequence[tuple[str, str]] = ()
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    empty: str = ""


@dataclass(frozen=True, slots=True)
class View:
    """How one kind of message is shown: its table columns, and (for ``get``) a
    detail view as sections."""

    columns: tuple[Column, ...]
    detail: Callable[[Any], list[Section]] | None = None


def make_console(stream: TextIO) -> Console:
    """A console on ``stream``: colours and the terminal's width when it is a TTY,
    plain and unwrapped otherwise (rich honours NO_COLOR and TERM=dumb)."""
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=False, emoji=False,
                   width=None if terminal else _PIPED_WIDTH, force_terminal=None)


def _styled(column: Column, cell: str) -> Text:
    return Text(cell, style=STATE_STYLES.get(cell.split(",")[0], "")) if column.coloured else Text(cell)


def table_of(columns: Sequence[Column], messages: Iterable[Any]) -> Table:
    """A table with a header and one row per message."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0))
    for column in columns:
        table.add_column(column.header, overflow="fold")
    for message in messages:
        table.add_row(*(_styled(c, c.value(message)) for c in columns))
    return table


def _constant(value: str) -> Callable[[Any], str]:
    return lambda _message: value


def _section_renderables(section: Section) -> list[RenderableType]:
    out: list[RenderableType] = []
    if section.title:
        out.append(Text(f"{section.title}:", style="bold"))
    if section.fields:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for label, value in section.fields:
            grid.add_row(f"{label}:", Text(value, style=STATE_STYLES.get(value.split(" ")[0], "")))
        out.append(Padding(grid, (0, 0, 0, 2 if section.title else 0), expand=False))
    if section.headers:
        if section.rows:
            table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0))
            for header in section.headers:
                table.add_column(header, overflow="fold")
            for row in section.rows:
                table.add_row(*(Text(cell, style=STATE_STYLES.get(cell, "")) for cell in row))
            out.append(Padding(table, (0, 0, 0, 2), expand=False))
        else:
            out.append(Padding(Text(section.empty or "none"), (0, 0, 0, 2), expand=False))
    return out


@dataclass
class Printer:
    """Writes messages in one ``-o`` format to ``out`` (progress and notes to ``err``)."""

    output: str = "table"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        if self.output not in FORMATS:
            raise ValueError(f"unknown output format {self.output!r}")
        self.console = make_console(self.out)
        self.err_console = make_console(self.err)

    # --- one message, a listing, a detail view ----------------------------------------

    def one(self, message: Any, view: View) -> None:
        """One message: a one-row table, or its document."""
        if self.output in STRUCTURED:
            self._documents([message], array=False)
        else:
            self.render(table_of(self._columns(view), [message]))

    def many(self, messages: Iterable[Any], view: View) -> None:
        """A listing. Tables wait for every page (to align the columns); ``json`` and
        ``name`` are written as the pages arrive — a JSON listing cut by an error
        leaves its array open, and the command fails."""
        if self.output in ("json", "name"):
            self._documents(messages, array=True)
        elif self.output == "yaml":
            self._documents(list(messages), array=True)
        else:
            rows = list(messages)
            if rows:
                self.render(table_of(self._columns(view), rows))
            else:
                self.note("No resources found.")

    def detail(self, message: Any, view: View, extra: Sequence[Section] = ()) -> None:
        """``get``: the detail view (with ``extra`` sections) for table output, the
        message alone otherwise."""
        if self.output in STRUCTURED or self.output == "wide" or view.detail is None:
            self.one(message, view)
            return
        renderables: list[RenderableType] = []
        for section in (*view.detail(message), *extra):
            renderables.extend(_section_renderables(section))
        for renderable in renderables:
            self.render(renderable)

    def events(self, events: Iterable[tuple[str, Any]], view: View) -> None:
        """``watch``: one line (or document) per ``(event type, message)`` as it comes.
        Table rows cannot be aligned ahead of time; each is laid out on its own."""
        header = True
        for kind, message in events:
            if self.output == "json":
                self.out.write(json.dumps({"type": kind, "object": to_dict(message)}) + "\n")
            elif self.output == "yaml":
                self.out.write(yaml.safe_dump({"type": kind, "object": to_dict(message)}, sort_keys=False,
                                              explicit_start=True))
            elif self.output == "name":
                self.out.write(short_name(message.name) + "\n")
            else:
                event = Column("EVENT", _constant(kind))
                table = table_of([event, *self._columns(view)], [message])
                table.show_header = header
                header = False
                for column, width in zip(table.columns, self._watch_widths(view), strict=False):
                    column.min_width = width
                self.render(table)
            self.out.flush()

    def text(self, line: str) -> None:
        """A plain line on stdout (e.g. a bearer token)."""
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, line: str) -> None:
        """A remark on stderr (not part of the output: "No resources found.")."""
        self.err_console.print(Text(line, style="dim"))

    # --- internals ----------------------------------------------------------------------

    def _columns(self, view: View) -> list[Column]:
        wide = self.output == "wide"
        return [c for c in view.columns if (not c.narrow if wide else not c.wide)]

    def _watch_widths(self, view: View) -> list[int]:
        # Room for typical values, so that streamed rows line up most of the time.
        hints = {"NAME": 20, "STATE": 9, "HOST": 10, "IP": 15}
        return [8, *(max(len(c.header), hints.get(c.header, 0)) for c in self._columns(view))]

    def _documents(self, messages: Iterable[Any], *, array: bool) -> None:
        if self.output == "name":
            for message in messages:
                self.out.write(short_name(message.name) + "\n")
                self.out.flush()
            return
        if self.output == "yaml":
            docs = [to_dict(m) for m in messages]
            self.out.write(yaml.safe_dump(docs if array else docs[0], sort_keys=False))
            self.out.flush()
            return
        if not array:
            for message in messages:
                self.out.write(json.dumps(to_dict(message), indent=2) + "\n")
            self.out.flush()
            return
        sep = "[\n"
        for message in messages:
            self.out.write(sep + json.dumps(to_dict(message), indent=2))
            self.out.flush()
            sep = ",\n"
        self.out.write("[]\n" if sep == "[\n" else "\n]\n")
        self.out.flush()

    def render(self, renderable: RenderableType) -> None:
        """Print a rich renderable: as is on a terminal; piped, without colour and
        with each line's trailing padding removed."""
        if self.console.is_terminal:
            self.console.print(renderable)
        else:
            with self.console.capture() as captured:
                self.console.print(renderable)
            self.out.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        self.out.flush()

    # --- progress -----------------------------------------------------------------------

    @contextmanager
    def progress(self, total: int | None = None) -> Iterator[ProgressLine]:
        """A progress display for a ``--wait``; see :class:`ProgressLine`."""
        plain_stream = self.err if self.output in STRUCTURED else self.out
        line = ProgressLine(self.err_console, plain_stream, total)
        try:
            yield line
        finally:
            line.close()


class ProgressLine:
    """What a ``--wait`` shows while it waits. On a terminal (stderr) a live line —
    spinner, text, elapsed time — with a bar when ``total`` is given, removed when
    done; otherwise each new text as a plain line on ``plain`` (nothing repeated)."""

    def __init__(self, console: Console, plain: TextIO, total: int | None) -> None:
        self._plain = plain
        self._last = ""
        self._progress: Progress | None = None
        if console.is_terminal:
            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns.append(TimeElapsedColumn())
            self._progress = Progress(*columns, console=console, transient=True)
            self._task = self._progress.add_task("", total=total)

    def update(self, text: str, *, completed: int | None = None, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text, completed=completed, total=total)
            self._progress.start()  # (shown from the first update on; starting again is a no-op)
            return
        if text != self._last:
            self._plain.write(text + "\n")
            self._plain.flush()
            self._last = text

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
