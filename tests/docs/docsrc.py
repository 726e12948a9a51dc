"""What the documentation names: environment variables, flags, defaults, metrics, headers, ports.

Names are taken from `code spans`, fenced code blocks, Markdown tables and `.env.sample` lines,
where this project's documents write them. Every function takes the text, so the self-tests can
feed it a made-up document.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The documents whose names are checked against the code.
# docs/kafka-security.md is left out: it quotes tansu's and openssl's flags and librdkafka's
# messages as test evidence; docs/reliability.md and docs/benchmarks.md are results.
DOCS = ["README.md", "docs/contracts.md", "docs/operations.md", "docs/edge.md",
        "charts/statecast/README.md"]
ENV_SAMPLES = {"crates/profile-api/.env.sample": "profile-api",
               "crates/profile-consumer/.env.sample": "profile-consumer"}

ENV_NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?:_\*|_<[A-Z]+>)?"
_ENV = re.compile(rf"(?<![A-Za-z0-9_$.-])({ENV_NAME})(?![A-Za-z0-9_(])")


@dataclasses.dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    text: str          # the name
    context: str       # the code span or code line it came from


def inline_spans(text: str) -> list:
    """(line, content) of every inline code span outside fenced blocks. A span may run over a
    line break within a paragraph (Markdown allows it); table rows are taken one by one."""
    out = []
    fenced = False
    paragraph = []  # (line number, text)

    def flush():
        if not paragraph:
            return
        joined = "\n".join(t for _, t in paragraph)
        starts = [n for n, t in paragraph for _ in range(len(t) + 1)]
        for m in re.finditer(r"`([^`]+)`", joined):
            out.append((starts[m.start()], m.group(1).replace("\n", " ")))
        paragraph.clear()

    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.strip() or line.lstrip().startswith(("|", "#")):
            flush()
            if line.strip():
                paragraph.append((number, line))
                flush()
            continue
        paragraph.append((number, line))
    flush()
    return out


def code_spans(text: str, doc: str = "<doc>") -> list:
    """(line, content) of every inline code span and every command of a fenced block (lines
    continued with a trailing backslash joined)."""
    out = inline_spans(text)
    fenced = False
    pending = None  # (line, text) of a fenced command continued with a trailing backslash
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if pending:
            start, joined = pending
            line, number = joined + " " + line.strip(), start
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1].rstrip())
            continue
        pending = None
        out.append((number, line))
    return sorted(out, key=lambda item: item[0])


def command_of(span: str) -> str:
    """The command a code span or line runs: its first word after `VAR=value` assignments."""
    for word in span.split():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", word):
            return word
    return ""


def env_mentions(text: str, doc: str = "<doc>") -> list:
    """Environment variable names (at least one `_`, upper case) in code spans and blocks."""
    out = []
    for number, span in code_spans(text, doc):
        for name in _ENV.findall(span):
            out.append(Mention(doc, number, name, span))
    return out


def flag_mentions(text: str, doc: str = "<doc>") -> list:
    out = []
    for number, span in code_spans(text, doc):
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span):
            out.append(Mention(doc, number, flag, span))
    return out


METRIC_PREFIXES = ("consumer_", "profile_cache_", "profile_db_", "profile_operator_", "http_request", "outbox_")
_METRIC = re.compile(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(\{([a-z_, ]*)\})?$")


def metric_mentions(text: str, doc: str = "<doc>") -> list:
    """Code spans that are a metric name, optionally with `{label,...}`: those ending in
    `_total`/`_seconds`, carrying labels, or starting like the project's metrics."""
    out = []
    for number, span in code_spans(text, doc):
        m = _METRIC.match(span.strip())
        if not m:
            continue
        name = m.group(1)
        if m.group(2) or name.endswith(("_total", "_seconds")) or name.startswith(METRIC_PREFIXES):
            if name.startswith(("outbox_retention", "consumer_group")):
                continue
            labels = tuple(l.strip() for l in (m.group(3) or "").split(",") if l.strip())
            out.append(Mention(doc, number, name, ",".join(labels)))
    return out


_HEADER_VALUE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+|ETag|traceparent|tracestate|Forwarded|Authorization|Location):\s")
_HEADER_NAME = re.compile(r"^(?:[Xx]-[a-z][a-z-]*|dlq-[a-z-]+\*?|(?:[A-Z][a-z]+-)+(?:[A-Z][a-z]+|ID)|ETag|traceparent|tracestate|Forwarded)$")


def header_mentions(text: str, doc: str = "<doc>") -> list:
    """Header names: `Name: value` spans and spans that are a header-shaped name
    (`x-cache`, `dlq-reason`, `If-None-Match`, `traceparent`, ...). Code blocks are left out:
    their `-H 'name: value'` arguments are run by the README check."""
    out = []
    for number, span in inline_spans(text):
        span = span.strip()
        m = _HEADER_VALUE.match(span)
        if m:
            out.append(Mention(doc, number, m.group(1), span))
        elif _HEADER_NAME.match(span):
            out.append(Mention(doc, number, span, span))
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    doc: str
    line: int
    section: str       # the nearest heading above the table
    names: tuple       # variables (and flags) of the first column
    default: str       # the raw default cell, "" when the table has no default column
    has_default_column: bool


def tables(text: str, doc: str = "<doc>") -> list:
    """Rows of every table whose first column names variables (`| env ... |` header)."""
    rows = []
    section = ""
    header = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            header = None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in _split_row(line)]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if not header[0].startswith("env"):
            continue
        names = tuple(n for n in re.findall(r"`([^`]+)`", cells[0]))
        names = tuple(n for n in names if re.fullmatch(ENV_NAME, n) or n.startswith("--"))
        has_default = len(header) > 1 and header[1] == "default"
        rows.append(Row(doc, number, section, names, cells[1] if has_default else "", has_default))
    return rows


def _split_row(line: str) -> list:
    """Cells of a table row; `|` inside a code span does not split."""
    cells, cell, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    cells.append(cell)
    return cells


# Default cells that say "no default" in words.
NO_DEFAULT_WORDS = {"", "required", "empty", "all", "none", "unset"}


def parse_default(cell: str):
    """A default cell as ("literal", [values]) when it is only code spans separated by commas,
    ("none", word) when it says there is none, or ("described", text) otherwise."""
    cell = cell.strip()
    if cell.lower() in NO_DEFAULT_WORDS:
        return ("none", cell.lower())
    parts = [p.strip() for p in re.split(r",(?=(?:[^`]*`[^`]*`)*[^`]*$)", cell)]
    if all(re.fullmatch(r"`[^`]*`", p) for p in parts):
        return ("literal", [p[1:-1] for p in parts])
    return ("described", cell)


def env_sample(text: str) -> list:
    """(line, name, value or None when commented out) of a `.env.sample`."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            value = None if m.group(1) else m.group(3).strip().strip('"')
            out.append((number, m.group(2), value))
    return out


def read(doc: str) -> str:
    return (ROOT / doc).read_text()
