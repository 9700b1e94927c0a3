"""Unit tests never reach the network: connecting to, or looking up, any host but this machine
fails as it would offline (``OSError``), so a test that would depend on the network fails, or
exercises kvviz's offline path, the same way everywhere."""

from __future__ import annotations

import socket

import pytest

LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


class NetworkBlocked(OSError):
    """A unit test tried to reach the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if sock.family != socket.AF_UNIX and host not in LOCAL_HOSTS:
            raise NetworkBlocked(f"unit tests do not reach the network (connect to {address!r})")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, f"unit tests do not reach the network (lookup of {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

