"""The four MCP lists and the call each entry of one stands for."""

from __future__ import annotations

import enum

from authz_server.cel.partial import CallShape


class ListKind(enum.Enum):
    """A list method, with the key of its entries in the result, the field naming an entry,
    and the shape of the call that uses an entry (whose fate decides the entry's)."""

    TOOLS = ("tools/list", "tools", "name", CallShape("tools/call", "ToolCall", "Name"))
    PROMPTS = ("prompts/list", "prompts", "name", CallShape("prompts/get", "PromptGet", "Name"))
    RESOURCES = (
        "resources/list",
        "resources",
        "uri",
        CallShape("resources/read", "ResourceRead", "URI"),
    )
    # A template's reads name URIs that depend on the template's variables: the URI is
    # unknown (a template without variables is its only URI, and is judged as a resource).
    RESOURCE_TEMPLATES = (
        "resources/templates/list",
        "resourceTemplates",
        "uriTemplate",
        CallShape("resources/read", "ResourceRead", None),
    )

    def __init__(self, method: str, entries: str, name: str, call: CallShape) -> None:
        self.method = method
        self.entries = entries
        self.name_key = name
        self.call = call

    @classmethod
    def for_method(cls, method: str) -> ListKind | None:
        """The list a JSON-RPC method returns; None for any other method."""
        return _BY_METHOD.get(method)


_BY_METHOD = {kind.method: kind for kind in ListKind}
