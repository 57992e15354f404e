"""filter_result: hidden entries leave a decoded list result, everything else stays."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from authz_server.listing import ListKind, MalformedList, filter_result


def hide(*hidden: str):  # type: ignore[no-untyped-def]
    def keep(names: Sequence[str]) -> tuple[bool, ...]:
        return tuple(name not in hidden for name in names)

    return keep


def test_hidden_entries_go_and_the_rest_of_the_result_stays_in_order() -> None:
    result = {
        "tools": [{"name": "a", "title": "A"}, {"name": "b"}, {"name": "c"}],
        "nextCursor": "abc",
        "_meta": {"k": 1},
    }
    filtered, hidden = filter_result(result, ListKind.TOOLS, hide("b"))
    assert filtered == {
        "tools": [{"name": "a", "title": "A"}, {"name": "c"}],
        "nextCursor": "abc",
        "_meta": {"k": 1},
    }
    assert hidden == 1
    assert len(result["tools"]) == 3  # the input is not changed


@pytest.mark.parametrize(
    ("kind", "entry"),
    [
        (ListKind.PROMPTS, {"name": "p"}),
        (ListKind.RESOURCES, {"uri": "file:///p", "name": "x"}),
        (ListKind.RESOURCE_TEMPLATES, {"uriTemplate": "file:///{p}", "name": "x"}),
    ],
)
def test_each_list_is_read_by_its_own_keys(kind: ListKind, entry: dict) -> None:
    name = entry[kind.name_key]
    assert filter_result({kind.entries: [entry]}, kind, hide(name)) == ({kind.entries: []}, 1)
    assert filter_result({kind.entries: [entry]}, kind, hide()) == ({kind.entries: [entry]}, 0)


def test_an_entry_without_a_name_cannot_be_judged_and_goes() -> None:
    result = {"tools": [{"name": "a"}, {"title": "no name"}, {"name": 7}, "junk"]}
    assert filter_result(result, ListKind.TOOLS, hide()) == ({"tools": [{"name": "a"}]}, 3)


def test_a_result_without_entries_is_unchanged_and_a_malformed_one_is_refused() -> None:
    assert filter_result({"nextCursor": "x"}, ListKind.TOOLS, hide()) == ({"nextCursor": "x"}, 0)
    with pytest.raises(MalformedList):
        filter_result({"tools": {"name": "a"}}, ListKind.TOOLS, hide())
    with pytest.raises(MalformedList):
        filter_result(["a"], ListKind.TOOLS, hide())  # type: ignore[arg-type]


def test_list_kinds_by_method() -> None:
    assert ListKind.for_method("resources/templates/list") is ListKind.RESOURCE_TEMPLATES
    assert ListKind.for_method("tools/call") is None
