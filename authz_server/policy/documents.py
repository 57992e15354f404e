"""Policy files to YAML documents that remember where each value came from.

Positions matter because ``validate`` must point at the character a CEL typo is on, including
inside block scalars (``expression: >`` or ``|``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz_server.policy.errors import PolicyIssue

SUFFIXES = (".yaml", ".yml")

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Document:
    file: str
    index: int
    data: Any
    nodes: dict[PathKey, yaml.Node] = field(repr=False, compare=False)
    lines: tuple[str, ...] = field(repr=False, compare=False)

    def position(self, path: PathKey) -> tuple[int, int]:
        """1-based line and column where the value at ``path`` starts; (0, 0) if unknown."""
        node = self.nodes.get(path)
        if node is None:
            return 0, 0
        return node.start_mark.line + 1, node.start_mark.column + 1

    def expression_position(self, path: PathKey, line: int, column: int) -> tuple[int, int]:
        """Map a 1-based position inside the scalar at ``path`` to a position in the file."""
        node = self.nodes.get(path)
        if node is None:
            return 0, 0
        start = node.start_mark.line + 1, node.start_mark.column + 1
        if line <= 0:
            return start
        return _locate(node, self.lines, str(node.value), line, column) or start


def _locate(
    node: yaml.Node, lines: tuple[str, ...], value: str, line: int, column: int
) -> tuple[int, int] | None:
    style = getattr(node, "style", None)
    first, last = node.start_mark.line, node.end_mark.line
    if first == last and style in ("'", '"', None):
        quote = 1 if style in ("'", '"') else 0
        return first + 1, node.start_mark.column + quote + column
    value_lines = value.split("\n")
    if line > len(value_lines):
        return None
    offset = sum(len(text) + 1 for text in value_lines[: line - 1]) + column - 1
    block = style in ("|", ">")
    rows = range(first + 1 if block else first, min(last + 1, len(lines)))
    # A block scalar's indentation is that of its first non-blank line; a line indented less
    # is already past the scalar (the end mark sits on the next token's line).
    base = next((len(lines[i]) - len(lines[i].lstrip(" ")) for i in rows if lines[i].strip()), 0)
    # Find each source line's text in the scalar's value, in order; the line holding the
    # offset gives the position. Folding and indentation only remove text around these pieces.
    cursor = 0
    for i in rows:
        raw = lines[i]
        if not raw.strip():
            continue
        if block and len(raw) - len(raw.lstrip(" ")) < base:
            break
        if block:
            start = base
        elif i == first:
            start = node.start_mark.column
        else:
            start = len(raw) - len(raw.lstrip(" "))
        text = raw[start:].rstrip() if not block or style == ">" else raw[start:]
        position = value.find(text, cursor)
        if position < 0:
            return None
        if position <= offset <= position + len(text):
            return i + 1, start + offset - position + 1
        cursor = position + len(text)
    return None


def find_files(root: Path) -> list[Path]:
    """Policy files under ``root`` (or ``root`` itself), each real file once, in sorted order.

    Hidden entries are skipped: Kubernetes mounts a ConfigMap as ``..2024_..`` directories
    behind a ``..data`` symlink, with visible per-key symlinks pointing through it, so reading
    only visible names reads each key exactly once and never a half-written new version.
    """
    if root.is_file():
        return [root]
    found: dict[Path, Path] = {}
    seen_dirs: set[Path] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = Path(current).resolve()
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = Path(current, name)
            found.setdefault(path.resolve(), path)
    return sorted(found.values())


def read_documents(path: Path, display: str) -> tuple[list[Document], list[PolicyIssue]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [PolicyIssue(display, f"cannot read the file: {exc}")]
    return parse_documents(text, display)


def parse_documents(text: str, display: str) -> tuple[list[Document], list[PolicyIssue]]:
    lines = tuple(text.splitlines())
    documents: list[Document] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or str(exc)
        return [], [PolicyIssue(display, f"invalid YAML: {problem}", line=line, column=column)]
    except yaml.YAMLError as exc:
        return [], [PolicyIssue(display, f"invalid YAML: {exc}")]
    issues: list[PolicyIssue] = []
    for index, node in enumerate(nodes):
        if node is None:
            continue
        positions: dict[PathKey, yaml.Node] = {}
        duplicates: list[tuple[PathKey, yaml.Node]] = []
        _index(node, (), positions, duplicates)
        for key_path, key_node in duplicates:
            issues.append(
                PolicyIssue(
                    display,
                    f"duplicate key {key_path[-1]!r}",
                    document_index=index,
                    field=field_name(key_path),
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                )
            )
        try:
            data = yaml.SafeLoader("").construct_document(node)
        except yaml.YAMLError as exc:
            issues.append(PolicyIssue(display, f"invalid YAML: {exc}", document_index=index))
            continue
        documents.append(Document(display, index, data, positions, lines))
    return documents, issues


def _index(
    node: yaml.Node,
    path: PathKey,
    positions: dict[PathKey, yaml.Node],
    duplicates: list[tuple[PathKey, yaml.Node]],
) -> None:
    positions[path] = node
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                duplicates.append(((*path, key), key_node))
            seen.add(key)
            _index(value_node, (*path, key), positions, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), positions, duplicates)


def field_name(path: PathKey) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text
