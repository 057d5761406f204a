"""Metrics never reach the network unless asked: issue 10, defect 13.

Triton cannot require the token on its metrics endpoint, which names the models, their versions
and request counts; with ``--host 0.0.0.0`` it used to listen on every address too. Now it stays
on loopback (or off), in both worlds.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from serve import ServeConfig, TritonServer, container_command
from serve._cli import register
from serve._container import compose_document
from serve._triton_args import server_arguments
from tests.fixtures.triton import write_echo_repository

_LISTEN = "0A"
_WILDCARDS = {"0.0.0.0", "::"}  # gRPC binds 0.0.0.0 as a dual-stack "::"


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket process ``pid`` listens on (/proc, no psutil)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != _LISTEN or fields[9] not in inodes:
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                sockets.add((str(ipaddress.ip_address(words)), int(port, 16)))
    return sockets


def _addresses_by_port(pid: int) -> dict[int, set[str]]:
    by_port: dict[int, set[str]] = {}
    for address, port in _listening_sockets(pid):
        by_port.setdefault(port, set()).add(address)
    return by_port


def _own_non_loopback_addresses() -> list[str]:
    """This machine's own IPv4 addresses other than loopback (from the kernel's routing table)."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except FileNotFoundError:
        return []
    found = {
        previous.split()[-1]
        for previous, line in itertools.pairwise(lines)
        if "/32 host LOCAL" in line
    }
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


def _start_on_every_address(tmp_path: Path, **overrides) -> TritonServer:
    config = ServeConfig(
        str(write_echo_repository(tmp_path / "r")),
        host="0.0.0.0",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        startup_timeout_s=180.0,
        exit_timeout_s=3,
        **overrides,
    )
    return TritonServer(config).start()


def _connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def test_metrics_bind_to_loopback_even_when_the_endpoints_bind_every_address():
    arguments = server_arguments(
        ServeConfig("repo", host="0.0.0.0"),
        repository="/repo",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        lock_value="L",
    )
    assert "--http-address=0.0.0.0" in arguments
    assert "--metrics-address=127.0.0.1" in arguments


def test_metrics_can_be_turned_off_or_bound_on_purpose():
    off = server_arguments(
        ServeConfig("repo", metrics=False),
        repository="/r",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        lock_value="L",
    )
    assert "--allow-metrics=false" in off
    assert not any(a.startswith(("--metrics-address", "--metrics-port")) for a in off)
    chosen = server_arguments(
        ServeConfig("repo", metrics_host="10.1.2.3"),
        repository="/r",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        lock_value="L",
    )
    assert "--metrics-address=10.1.2.3" in chosen


def test_container_keeps_metrics_inside_and_unpublished_unless_asked(tmp_path):
    repository = str(write_echo_repository(tmp_path / "model_repository"))
    default = ServeConfig(repository, mode="container", host="0.0.0.0")
    command = container_command(default)
    published = [command[i + 1] for i, a in enumerate(command) if a == "-p"]
    assert published == ["0.0.0.0:8000:8000", "0.0.0.0:8001:8001"]
    assert "--metrics-address=127.0.0.1" in command[-1]
    assert compose_document(default)["services"]["triton"]["ports"] == published

    asked = ServeConfig(repository, mode="container", host="0.0.0.0", metrics_host="127.0.0.1")
    command = container_command(asked)
    assert "127.0.0.1:8002:8002" in command  # published on the host's loopback only
    assert "--metrics-address=0.0.0.0" in command[-1]  # docker's proxy reaches it inside

    off = container_command(ServeConfig(repository, mode="container", metrics=False))
    assert "--allow-metrics=false" in off[-1]
    assert not any(a.endswith(":8002") for a in off)


def test_serve_help_says_metrics_carry_no_token_and_stay_on_loopback():
    subparsers = argparse.ArgumentParser().add_subparsers()
    register(subparsers)
    text = " ".join(subparsers.choices["serve"].format_help().split())
    assert "cannot require the token on metrics" in text
    assert "loopback (127.0.0.1) whatever --host is" in text
    assert "--no-metrics" in text


@pytest.mark.triton
@pytest.mark.slow
def test_a_server_on_every_address_keeps_metrics_on_loopback(tmp_path, request):
    server = _start_on_every_address(tmp_path)
    request.addfinalizer(server.stop)
    endpoints = server.endpoints
    listening = _addresses_by_port(server.pid)
    assert set(listening) == {endpoints.http_port, endpoints.grpc_port, endpoints.metrics_port}
    assert listening[endpoints.http_port] <= _WILDCARDS
    assert listening[endpoints.grpc_port] <= _WILDCARDS
    assert listening[endpoints.metrics_port] == {"127.0.0.1"}
    assert endpoints.metrics_url == f"http://127.0.0.1:{endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(endpoints.metrics_url, timeout=5) as response:
        assert b"nv_inference_count" in response.read()  # still there for a local Prometheus
    for address in _own_non_loopback_addresses():
        assert _connects(address, endpoints.http_port), address
        assert not _connects(address, endpoints.metrics_port), address


@pytest.mark.triton
@pytest.mark.slow
def test_a_server_without_metrics_listens_on_no_metrics_port(tmp_path, request):
    server = _start_on_every_address(tmp_path, metrics=False)
    request.addfinalizer(server.stop)
    assert server.models
    assert server.endpoints.metrics_url is None
    listening = _addresses_by_port(server.pid)
    assert set(listening) == {server.endpoints.http_port, server.endpoints.grpc_port}
