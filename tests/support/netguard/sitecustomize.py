"""Loaded by Python at start-up when this folder is on PYTHONPATH (tests/test_preflight.py).

A socket-level network guard: every non-loopback ``connect`` and every DNS lookup of a remote name is
written to ``$NET_GUARD_LOG`` and refused, so a test can assert that a command never tried to reach
a model hub (whatever its retry policy or timeouts would have done).
"""

import os
import socket

_LOG = os.environ.get("NET_GUARD_LOG")
_LOCAL_PREFIXES = ("127.", "::1", "0.0.0.0", "localhost")


def _local(host) -> bool:
    return host in ("", None) or str(host).startswith(_LOCAL_PREFIXES)


def _record(what: str, target) -> None:
    with open(_LOG, "a") as f:
        f.write(f"{what} {target!r}\n")


if _LOG:
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _record("connect", address)
            raise ConnectionRefusedError(111, "network guard: non-loopback connection refused")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _record("connect", address)
            return 111
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host) and host != socket.gethostname():
            _record("getaddrinfo", host)
            raise socket.gaierror(socket.EAI_NONAME, "network guard: no DNS")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
