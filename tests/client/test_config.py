"""ClientConfig and the token headers: pure checks, no server."""

from __future__ import annotations

import pytest

from client import ClientConfig
from client._transport import TransportSettings, token_headers
from detstack.errors import ConfigError
from serve import token_headers as serve_token_headers


@pytest.mark.parametrize(
    ("url", "protocol", "address", "ssl"),
    [
        ("localhost", "grpc", "localhost:8001", False),
        ("localhost", "http", "localhost:8000", False),
        ("http://10.0.0.2:9000/", "http", "10.0.0.2:9000", False),
        ("https://triton.example:443", "http", "triton.example:443", True),
        ("grpc://127.0.0.1:50051", "grpc", "127.0.0.1:50051", False),
    ],
)
def test_client_config_accepts_host_port_with_or_without_scheme_and_default_port(
    url, protocol, address, ssl
):
    config = ClientConfig(url=url, protocol=protocol)
    assert config.address == address
    assert config.ssl is ssl


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "udp"},
        {"timeout": 0},
        {"concurrency": 0},
        {"retries": -1},
        {"token": "two words"},
        {"token": "line\nbreak"},
        {"token": ""},
    ],
)
def test_client_config_refuses_values_that_cannot_work(changes):
    with pytest.raises(ConfigError):
        ClientConfig(**changes)


def test_the_token_never_appears_in_reprs():
    secret = "a-very-secret-token-value-1234"
    config = ClientConfig(token=secret)
    settings = TransportSettings(
        "h:1", "grpc", "m", "", secret, "authorization", "Bearer", 1.0, 1.0
    )
    assert secret not in repr(config)
    assert secret not in repr(settings)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_token_headers_are_exactly_what_the_serve_stage_configures(protocol):
    token = "detstack-test-token-0123456789abcdef"
    defaults = ClientConfig()
    ours = token_headers(protocol, defaults.token_header, token, defaults.token_scheme)
    assert ours == serve_token_headers(token, protocol)
    assert token_headers(protocol, defaults.token_header, None) is None
