"""The host firewall's settings: on or off, the SSH port it keeps open, who may scrape metrics, extra open ports."""

import ipaddress

from matrix_deploy.operator.declare import HOSTNAME, Option, bad, boolean, port


def scrapers(key, value, problems):
    """A list of IP addresses, networks (CIDR) or host names, each once."""
    value = [] if value is None else value
    if not isinstance(value, (list, tuple)):
        return bad(problems, key, value, "a list of IP addresses, networks or host names") or ()
    found = []
    for item in value:
        try:
            found.append(
                str(ipaddress.ip_network(item, strict=False)) if "/" in str(item) else str(ipaddress.ip_address(item))
            )
            continue
        except ValueError:
            pass
        # A name whose last label is all digits is a mistyped address (10.0.0.300), not a name.
        if isinstance(item, str) and HOSTNAME.match(item) and not item.rsplit(".", 1)[-1].isdigit():
            found.append(item)
        else:
            bad(problems, key, item, "an IP address, a network like 10.0.0.0/24, or a host name (lower case)")
    for item in sorted({f for f in found if found.count(f) > 1}):
        bad(problems, key, item, "each scraping host listed once")
    return tuple(dict.fromkeys(found))


def open_ports(key, value, problems):
    """A list of TCP ports, each once."""
    value = [] if value is None else value
    if not isinstance(value, (list, tuple)):
        return bad(problems, key, value, "a list of TCP port numbers") or ()
    found = [p for item in value if (p := port(key, item, problems)) is not None]
    for item in sorted({p for p in found if found.count(p) > 1}):
        bad(problems, key, item, "each port listed once")
    return tuple(dict.fromkeys(found))


def ssh_port(key, value, problems):
    """Unset (None), or a TCP port."""
    return None if value is None else port(key, value, problems)


OPTIONS = (
    Option(
        "firewall", True,
        "an nftables table of our own (`inet matrix_deploy`) on every host, from the placement: each port open only "
        "to the hosts that need it (see Firewall); `false`: our table removed, nftables left to you",
        boolean,
    ),
    Option(
        "firewall_ssh_port", None,
        "the SSH port the firewall keeps open to anyone on every host; unset: each host's own, the `ssh_port` the "
        "inventory connects to (22 where it sets none); set: where the inventory sets `ssh_port`, it must be the same",
        ssh_port,
    ),
    Option(
        "firewall_metrics_scrapers", [],
        "who may reach the metrics ports (Prometheus): IP addresses, networks (`10.0.0.0/24`) or host names every "
        "host resolves; `[]`: nobody but the host itself",
        scrapers,
    ),
    Option(
        "firewall_open_ports", [],
        "more TCP ports the firewall opens to anyone on every host (your own services)",
        open_ports,
    ),
)  # fmt: skip
