"""Who may open an association with an endpoint."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class AccessPolicy:
    """Calling AE title globs and peer networks; an empty list allows everyone."""

    calling_aets: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_lists(cls, calling_aets: list[str], hosts: list[str]) -> AccessPolicy:
        return cls(tuple(calling_aets), tuple(ipaddress.ip_network(h, strict=False) for h in hosts))

    def refusal(self, calling_aet: str, peer_host: str) -> str | None:
        """Why the association must be rejected, or None to accept it."""
        if self.networks and not self._host_allowed(peer_host):
            return f"peer address {peer_host} is not in allowed_hosts"
        if self.calling_aets and not any(fnmatch.fnmatchcase(calling_aet, g) for g in self.calling_aets):
            return f"calling AE title {calling_aet!r} is not in allowed_calling_aets"
        return None

    def _host_allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)
