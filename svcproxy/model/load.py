"""Read Service, EndpointSlice and Node objects from YAML/JSON files and directories.

Accepts multi-document YAML, JSON (one or more values), and `kind: List` (or any `*List`)
wrappers. Objects of other kinds are ignored; broken ones are collected as errors and skipped.

Speed: a 10k-Service cluster is a 30 MB file, so JSON is parsed as JSON (the stdlib's C
decoder), YAML by yaml-rs (a Rust YAML 1.2 parser, ~7x PyYAML's C loader), and documents one at
a time so that one that does not parse is named (file, document number, line) and the others
still load. The cyclic collector is paused while the objects are built (see gcpause.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml_rs

from ..gcpause import gc_paused
from .objects import EndpointSlice, Node, Service, ServiceCIDR
from .parse import PARSERS, ObjectError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_DOC_START = re.compile(r"^---(?=[ \t\r]|$)", re.M)  # a YAML document marker is always at column 0
_WHERE = re.compile(r"at line (\d+), column (\d+)")


@dataclass
class Objects:
    """Everything read from a set of manifests, and what could not be used."""

    services: list[Service] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    service_cidrs: list[ServiceCIDR] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, obj: Service | EndpointSlice | Node | ServiceCIDR) -> None:
        if isinstance(obj, Service):
            self.services.append(obj)
        elif isinstance(obj, EndpointSlice):
            self.slices.append(obj)
        elif isinstance(obj, ServiceCIDR):
            self.service_cidrs.append(obj)
        else:
            self.nodes.append(obj)

    def extend(self, other: Objects) -> None:
        self.services += other.services
        self.slices += other.slices
        self.nodes += other.nodes
        self.service_cidrs += other.service_cidrs
        self.errors += other.errors


@dataclass(frozen=True)
class Document:
    """One top-level document of a file: its number (from 1), first line, and parsed value."""

    index: int
    line: int
    data: Any


def manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files behind the given paths: files as given, directories walked in sorted order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in MANIFEST_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory (give -f a manifest file or directory)")
    return out


def read_documents(text: str, origin: str = "") -> tuple[list[Document], list[str]]:
    """The documents of one file's text, and an error for each one that does not parse.

    JSON when the file is .json or starts like JSON (YAML, a superset, where that fails: JSON
    documents between `---` lines); YAML otherwise, split at its `---` markers."""
    prefix = f"{origin}: " if origin else ""
    if not (origin.endswith(".json") or text.lstrip()[:1] in ("{", "[")):
        return _yaml_documents(text, prefix)
    docs, error = _json_documents(text)
    if error is None:
        return docs, []
    as_yaml, yaml_errors = _yaml_documents(text, prefix)  # JSON documents between `---` lines
    if not yaml_errors or not origin.endswith(".json"):
        return as_yaml, yaml_errors
    return docs, [f"{prefix}{error}; the rest of the file is skipped"]


def _json_documents(text: str) -> tuple[list[Document], str | None]:
    """Every JSON value in text (kubectl prints one; `kubectl get -o json` per object, several)."""
    decoder = json.JSONDecoder()
    docs: list[Document] = []
    pos, end, line, counted = 0, len(text), 1, 0
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos == end:
            return docs, None
        try:
            data, after = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return docs, f"document {len(docs) + 1}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        line += text.count("\n", counted, pos)  # counted on from the last document: one pass in all
        counted = pos
        docs.append(Document(len(docs) + 1, line, data))
        pos = after


def _yaml_documents(text: str, prefix: str) -> tuple[list[Document], list[str]]:
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts or text[:starts[0]].strip():
        starts.insert(0, 0)  # a first document without its `---`
    docs: list[Document] = []
    errors: list[str] = []
    line = text.count("\n", 0, starts[0]) + 1
    for number, (start, stop) in enumerate(zip(starts, starts[1:] + [len(text)], strict=True), 1):
        chunk = text[start:stop]
        try:
            data = yaml_rs.loads(chunk, parse_datetime=False, duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.LastWins)
        except yaml_rs.YAMLDecodeError as e:
            first = str(e).splitlines()[0] if str(e) else "cannot parse"
            at = _WHERE.search(first)
            if at:  # the parser counts lines from the document's start; say the file's line
                first = first.replace(at.group(0), f"at line {line + int(at.group(1)) - 1}, column {at.group(2)}")
            errors.append(f"{prefix}document {number} (line {line}): not valid YAML: {first}; skipped")
        else:
            docs.append(Document(number, line, data))
        line += chunk.count("\n")
    return docs, errors


def iter_documents(data: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """Flatten a parsed document into (where, object): List kinds are unwrapped (where names
    the item, `items[3]`), None documents and non-mappings skipped."""
    if data is None:
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield from iter_documents(item, f"{where}[{i}]")
    elif isinstance(data, dict):
        kind = data.get("kind", "")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(data.get("items"), list):
            for i, item in enumerate(data["items"]):
                yield from iter_documents(item, f"{where}.items[{i}]" if where else f"items[{i}]")
        else:
            yield where, data


def raw_objects(docs: Iterable[Document]) -> Iterator[tuple[str, dict]]:
    """(where, object) for every object in the documents; where is `document 2, items[5]`."""
    for doc in docs:
        for inner, obj in iter_documents(doc.data):
            yield (f"document {doc.index}, {inner}" if inner else f"document {doc.index}"), obj


def parse_objects(docs: Iterable[Document], origin: str = "") -> Objects:
    """Parse raw objects into model objects; a bad one becomes an error naming its file,
    document and object, and the rest goes on."""
    result = Objects()
    prefix = f"{origin}: " if origin else ""
    with gc_paused():
        for where, obj in raw_objects(docs):
            parser = PARSERS.get(obj.get("kind", ""))
            if parser is None:
                continue
            try:
                result.add(parser(obj))
            except ObjectError as e:
                result.errors.append(f"{prefix}{where}: {e}")
    return result


def _objects(docs: list[Document], errors: list[str], origin: str) -> Objects:
    """The documents' objects, with the errors of reading them first."""
    result = parse_objects(docs, origin)
    result.errors[:0] = errors
    return result


def load_text(text: str, origin: str = "") -> Objects:
    with gc_paused():
        docs, errors = read_documents(text, origin)
    return _objects(docs, errors, origin)


def read_file(path: Path) -> tuple[list[Document], list[str]]:
    """The documents of one manifest file, and what could not be read or parsed."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return [], [f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"]
    with gc_paused():
        return read_documents(text, str(path))


def load_paths(paths: Iterable[str | Path]) -> Objects:
    """Load every manifest under paths. Raises FileNotFoundError for a path that is not there."""
    result = Objects()
    for f in manifest_files(paths):
        result.extend(_objects(*read_file(f), str(f)))
    return result
