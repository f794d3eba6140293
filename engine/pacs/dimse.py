"""DIMSE plumbing shared by ``sarco export --pacs`` and ``sarco fetch``: addresses and associations.

A PACS address is ``AET@HOST:PORT``. Associations get ``TCP_NODELAY`` on their socket: pynetdicom
writes a PDU in several ``send`` calls, and with Nagle's algorithm on, each C-STORE then waits for
the peer's delayed ACK (about 40-90 ms on Linux) before its last segment leaves; ``bench/`` measures it.

Every wait on a peer is bounded (:class:`Timeouts`): the TCP connection, the association's
negotiation, each DIMSE response and the idle network, each HTTP request. A peer that accepts a
connection and never answers costs one timeout per attempt, never pynetdicom's or requests' own
(unbounded or 30 s) defaults.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from engine.errors import SarcoError, UsageError

#: Our AE title unless the command names another (``--aet``).
CALLING_AET = "SARCO"
#: A TCP connection on a hospital network opens in milliseconds: a few seconds mean nobody is there.
CONNECT_TIMEOUT_S = 5.0
#: The longest wait for one answer (association accepted, DIMSE response, HTTP response); a PACS
#: that stores a SEG of a few MB answers in well under a second.
RESPONSE_TIMEOUT_S = 30.0
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 chars, no backslash or control


class PacsError(SarcoError):
    """The PACS could not be reached or refused (dead port, association rejected or aborted, store failed)."""


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every wait for a peer, seconds (config ``pacs``; ``--connect-timeout``, ``--timeout``).

    ``connect_s``: the TCP connection. ``response_s``: the association's negotiation (ACSE), each
    DIMSE response, the network's silence inside an association, and each HTTP response.
    """

    connect_s: float = CONNECT_TIMEOUT_S
    response_s: float = RESPONSE_TIMEOUT_S

    def apply(self, ae) -> None:
        """Set them on a pynetdicom ``AE`` (its own defaults: 30 s, and no bound on the connection)."""
        ae.connection_timeout = self.connect_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.response_s


@dataclass(frozen=True)
class PacsAddress:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_address(text: str) -> PacsAddress:
    """``AET@HOST:PORT`` -> :class:`PacsAddress`, else a :class:`UsageError` saying what to fix."""
    match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)", text.strip())
    if not match:
        raise UsageError(f"PACS address '{text}' is not AET@HOST:PORT (for example ORTHANC@127.0.0.1:4242)")
    aet, host, port = match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3))
    if not _AET.match(aet) or not aet.strip():
        raise UsageError(f"PACS address '{text}': AE title '{aet}' must be 1-16 printable characters without '\\'")
    if not 1 <= port <= 65535:
        raise UsageError(f"PACS address '{text}': port {port} is not between 1 and 65535")
    return PacsAddress(aet, host, port)


def check_calling_aet(aet: str) -> str:
    if not _AET.match(aet) or not aet.strip():
        raise UsageError(f"calling AE title '{aet}' must be 1-16 printable characters without '\\'")
    return aet


def set_nodelay(assoc) -> None:
    """TCP_NODELAY on an established association's socket (see the module docstring)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reachable(address: PacsAddress, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when something accepts a TCP connection at ``address``, else the system's reason."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return None
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def associate(ae, address: PacsAddress, *, nodelay: bool = True, timeouts: Timeouts | None = None, **kwargs):
    """An established association with ``address``, or a :class:`PacsError` saying why not.

    Only a failed association is followed by a plain TCP probe (dead port or a refusing peer?): a
    probe before every association would hold one of the peer's DICOM threads for nothing. A peer
    that accepted the connection but did not answer within ``timeouts.response_s`` is named so.
    """
    timeouts = timeouts or Timeouts()
    timeouts.apply(ae)
    started = time.monotonic()
    assoc = ae.associate(address.host, address.port, ae_title=address.aet, **kwargs)
    if assoc.is_established:
        if nodelay:
            set_nodelay(assoc)
        return assoc
    if assoc.is_rejected:
        raise PacsError(f"{address} rejected the association (is the calling AE title '{ae.ae_title}' known to it, "
                        "and the called AE title right?)")
    waited = time.monotonic() - started
    unreachable = _reachable(address, timeouts.connect_s)
    if unreachable is not None:
        raise PacsError(f"nothing answers at {address.host}:{address.port} ({unreachable})")
    if waited >= timeouts.response_s:
        raise PacsError(f"{address} accepted the connection but did not answer the association request within "
                        f"{timeouts.response_s:g} s")
    if assoc.is_aborted:
        raise PacsError(f"{address} aborted the association (is the calling AE title '{ae.ae_title}' known to it?)")
    raise PacsError(f"{address} did not accept an association (no common presentation context?)")
