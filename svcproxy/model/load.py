"""Read Service, EndpointSlice and Node objects from YAML/JSON files and directories.

Accepts multi-document YAML, JSON, and `kind: List` (or any `*List`) wrappers. Objects of
other kinds are ignored; broken ones are collected as errors and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .objects import EndpointSlice, Node, Service, ServiceCIDR
from .parse import PARSERS, ObjectError

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


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


def iter_documents(data: Any) -> Iterator[dict]:
    """Flatten a parsed document: List kinds are unwrapped, None documents skipped."""
    if data is None:
        return
    if isinstance(data, list):
        for item in data:
            yield from iter_documents(item)
    elif isinstance(data, dict):
        kind = data.get("kind", "")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(data.get("items"), list):
            for item in data["items"]:
                yield from iter_documents(item)
        else:
            yield data


def parse_objects(docs: Iterable[Any], origin: str = "") -> Objects:
    """Parse raw dicts into model objects; bad ones become errors prefixed with their origin."""
    result = Objects()
    prefix = f"{origin}: " if origin else ""
    for doc in docs:
        for obj in iter_documents(doc):
            parser = PARSERS.get(obj.get("kind", ""))
            if parser is None:
                continue
            try:
                result.add(parser(obj))
            except ObjectError as e:
                result.errors.append(f"{prefix}{e}")
    return result


def load_text(text: str, origin: str = "") -> Objects:
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # JSON is YAML too
    except yaml.YAMLError as e:
        return Objects(errors=[f"{origin}: not valid YAML/JSON: {e}".replace("\n", " ")])
    return parse_objects(docs, origin)


def load_paths(paths: Iterable[str | Path]) -> Objects:
    """Load every manifest under paths. Raises FileNotFoundError for a path that is not there."""
    result = Objects()
    for f in manifest_files(paths):
        try:
            text = f.read_text()
        except OSError as e:
            result.errors.append(f"{f}: cannot read: {e.strerror}")
            continue
        result.extend(load_text(text, str(f)))
    return result
