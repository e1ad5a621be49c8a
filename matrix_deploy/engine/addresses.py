"""Addresses as given in settings: an IP address is itself; a host name is only resolved on the hosts."""

import ipaddress


def resolve_literal(address: str) -> list[str]:
    """An IP address as itself; a host name's addresses are only known on the hosts (host_state.resolve)."""
    try:
        return [str(ipaddress.ip_address(address))]
    except ValueError:
        raise LookupError(f"{address} is a host name: resolve it on the host (host_state)") from None
