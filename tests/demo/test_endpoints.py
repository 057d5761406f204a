"""The demo page's endpoint parser and allow-list (pure functions, no server)."""

from __future__ import annotations

import pytest

from demo import DEFAULT_ALLOWED_ENDPOINTS, DemoConfig
from demo._endpoints import (
    EndpointNotAllowedError,
    check_endpoint,
    parse_allow_list,
    parse_endpoint,
)
from detstack.errors import ConfigError

LOOPBACK = parse_allow_list(DEFAULT_ALLOWED_ENDPOINTS)


@pytest.mark.parametrize(
    ("text", "protocol", "host", "port", "model", "version"),
    [
        ("grpc://127.0.0.1:8001", "grpc", "127.0.0.1", 8001, None, None),
        ("http://localhost", "http", "localhost", 8000, None, None),
        ("127.0.0.1:9000", "http", "127.0.0.1", 9000, None, None),
        ("http://[::1]:8000/", "http", "::1", 8000, None, None),
        ("http://h:1/v2/models/my-detection-model", "http", "h", 1, "my-detection-model", None),
        ("http://h:1/v2/models/m/versions/2/infer", "http", "h", 1, "m", "2"),
    ],
)
def test_parse_endpoint_reads_protocol_host_port_model_and_version(
    text, protocol, host, port, model, version
):
    endpoint = parse_endpoint(text)
    assert (endpoint.protocol, endpoint.host, endpoint.port) == (protocol, host, port)
    assert (endpoint.model, endpoint.version) == (model, version)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("ftp://127.0.0.1:21", "scheme"),
        ("http://user:pw@127.0.0.1:8000", "user name"),
        ("http://127.0.0.1:8000/admin", "path"),
        ("http://127.0.0.1:8000/?x=1", "query"),
        ("http://127.0.0.1:99999", "not a valid URL"),
    ],
)
def test_parse_endpoint_refuses_what_is_not_a_triton_endpoint(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_endpoint(text)


def test_loopback_endpoints_are_allowed_by_default_and_pinned_to_an_address():
    assert check_endpoint(parse_endpoint("grpc://127.0.0.1:8001"), LOOPBACK).address == (
        "127.0.0.1:8001"
    )
    assert check_endpoint(parse_endpoint("http://[::1]:8000"), LOOPBACK).address == "[::1]:8000"
    assert check_endpoint(parse_endpoint("http://localhost:8000"), LOOPBACK).address == (
        "localhost:8000"
    )


@pytest.mark.parametrize(
    "text", ["http://10.0.0.5:8000", "grpc://169.254.169.254:80", "http://[fe80::1]:8000"]
)
def test_other_addresses_are_refused_by_default(text):
    with pytest.raises(EndpointNotAllowedError, match="--allow-endpoint"):
        check_endpoint(parse_endpoint(text), LOOPBACK)


def test_allow_list_entries_can_limit_the_port():
    rules = parse_allow_list(["10.0.0.0/8:8001", "triton.internal:8000"])
    assert check_endpoint(parse_endpoint("grpc://10.1.2.3:8001"), rules).address == "10.1.2.3:8001"
    with pytest.raises(EndpointNotAllowedError):
        check_endpoint(parse_endpoint("http://10.1.2.3:22"), rules)
    assert check_endpoint(parse_endpoint("http://Triton.Internal:8000"), rules).address == (
        "triton.internal:8000"
    )


def test_a_host_name_not_on_the_list_is_allowed_only_if_it_resolves_to_allowed_addresses():
    resolved = check_endpoint(
        parse_endpoint("http://localhost:8000"), parse_allow_list(["127.0.0.0/8", "::1"])
    )
    assert resolved.address in ("127.0.0.1:8000", "[::1]:8000")
    with pytest.raises(EndpointNotAllowedError):
        check_endpoint(parse_endpoint("http://localhost:8000"), parse_allow_list(["10.0.0.0/8"]))


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "host name", "[::1", "h:0"])
def test_a_bad_allow_list_entry_is_a_config_error_at_start(entry):
    with pytest.raises(ConfigError, match="allow-list entry"):
        DemoConfig(allowed_endpoints=(entry,))
