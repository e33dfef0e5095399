"""The one Engine API `filters` parser (engineapi/filters.py) and the CLI's `--filter` helper.

The expected behaviours are dockerd's (moby api/types/filters: FromJSON, Get, ExactMatch,
GetBoolOrDefault, Validate, and the invalidFilter error text)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import click
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner

from cli.common import filter_option, filter_query, with_filter
from engineapi.filters import Filters, InvalidFilter, parse_filters, request_filters


def test_both_forms_parse_to_the_same_filters() -> None:
    cli = parse_filters('{"name": {"web": true, "db": true}, "label": {"a=b": true}}')
    py = parse_filters('{"name": ["web", "db"], "label": ["a=b"]}')
    assert cli == py
    assert dict(cli) == {"name": ["web", "db"], "label": ["a=b"]}
    assert "name" in cli and "id" not in cli and cli.get("id") is None


def test_empty_and_null_mean_no_filters() -> None:
    for raw in (None, "", "{}", "null"):
        assert len(parse_filters(raw)) == 0
    for raw in ('{"name": null, "id": {}}', '{"name": null, "id": []}'):
        keyed = parse_filters(raw)
        assert dict(keyed) == {"name": [], "id": []}
        assert keyed.exact_match("name", "anything")


def test_repeated_list_values_are_one_set() -> None:
    assert parse_filters('{"name": ["a", "a", "b"]}')["name"] == ["a", "b"]


def test_a_value_mapped_to_false_is_named_by_get_but_never_matches_exactly() -> None:
    filters = parse_filters('{"mode": {"global": false}, "name": {"web": false, "db": true}}')
    # Get (and so every swarm filter, label, name and id) still sees it
    assert filters["mode"] == ["global"]
    assert filters["name"] == ["web", "db"]
    # ExactMatch does not, and the key still filters: nothing matches
    assert not filters.exact_match("mode", "global")
    assert not filters.exact_match("mode", "replicated")
    assert filters.exact_match("name", "db") and not filters.exact_match("name", "web")
    assert filters.exact_match("driver", "overlay")  # an absent key does not filter
    null_flag = parse_filters('{"name": {"web": null}}')  # Go decodes a null flag as false
    assert null_flag["name"] == ["web"] and not null_flag.exact_match("name", "web")


def test_bool_value_reads_only_true_flags() -> None:
    assert parse_filters("").bool_value("dangling", True) is True
    assert parse_filters('{"dangling": ["true"]}').bool_value("dangling", False) is True
    assert parse_filters('{"dangling": {"0": true}}').bool_value("dangling", True) is False
    assert parse_filters('{"dangling": {"true": true, "false": false}}').bool_value("dangling", False) is True
    cases = {
        '{"dangling": {"true": false}}': "invalid filter 'dangling=[true]'",
        '{"dangling": ["true", "0"]}': "invalid filter 'dangling=[true 0]'",
        '{"dangling": ["TRUE"]}': "invalid filter 'dangling=[TRUE]'",
        '{"dangling": []}': "invalid filter 'dangling'",
    }
    for raw, message in cases.items():
        with pytest.raises(InvalidFilter) as err:
            parse_filters(raw).bool_value("dangling", False)
        assert (err.value.status, err.value.message) == (400, message), raw


@pytest.mark.parametrize("raw", [
    "{", "nope", "[]", '"name"', "1",
    '{"name": "web"}',                              # a scalar where a set belongs
    '{"name": [1]}', '{"name": {"web": 1}}',         # not strings / not booleans
    '{"name": ["web"], "mode": {"global": true}}',   # the two forms mixed
    '{"id": {}, "name": []}',
])
def test_anything_else_is_invalid_filter(raw: str) -> None:
    with pytest.raises(InvalidFilter) as err:
        parse_filters(raw)
    assert (err.value.status, err.value.message) == (400, "invalid filter")


def test_unknown_key_names_the_key() -> None:
    filters = parse_filters('{"name": ["x"], "colour": ["red"]}')
    filters.validate({"name", "colour"})
    with pytest.raises(InvalidFilter) as err:
        filters.validate({"name", "id"})
    assert (err.value.status, err.value.message) == (400, "invalid filter 'colour'")


def test_request_filters_parses_and_validates() -> None:
    def request(doc: object) -> web.Request:
        return make_mocked_request("GET", "/tasks?" + urlencode({"filters": json.dumps(doc)}))

    assert request_filters(request({"name": {"web": True}}), {"name"}) == Filters({"name": {"web": True}})
    with pytest.raises(InvalidFilter, match="invalid filter 'id'"):
        request_filters(request({"id": ["x"]}), {"name"})


def test_filter_query_builds_the_docker_cli_map_form() -> None:
    assert filter_query(()) is None
    query = filter_query(("name=web", "label=a=b", " Label = c ", "", "name=db"))
    assert query == {"name": {"web": True, "db": True}, "label": {"a=b": True, "c": True}}
    assert parse_filters(json.dumps(query))["label"] == ["a=b", "c"]
    assert with_filter(query, "service", "s1") == {**(query or {}), "service": {"s1": True}}
    assert "service" not in (query or {})


@pytest.mark.parametrize("item", ["name", "=web"])
def test_filter_option_refuses_an_item_without_a_key_and_value(item: str) -> None:
    seen: list[object] = []

    @click.command()
    @filter_option("-f", "--filter", help="filters")
    def ls(filters: object) -> None:
        seen.append(filters)

    ok = CliRunner().invoke(ls, ["-f", "a=1", "--filter", "a=2"])
    assert ok.exit_code == 0 and seen == [{"a": {"1": True, "2": True}}]
    bad = CliRunner().invoke(ls, ["-f", item])
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit)
    assert "Invalid value for '-f' / '--filter': bad format of filter (expected name=value)" in bad.output
    assert "Traceback" not in bad.output
