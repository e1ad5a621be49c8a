"""What a service declares for the host firewall: its doors, each a port (or ports) and who may come through."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Door:
    what: str  # for the rule's comment: "PostgreSQL", "Synapse's metrics"
    ports: tuple[int, ...]
    clients: tuple[str, ...] | None = None  # the inventory's hosts that come through; None: anyone
    scrapers: bool = False  # the metrics scrapers the operator names come through (instead of `clients`)


def to(what: str, ports, clients, here: str) -> list[Door]:
    """A door of `here` for `clients` (inventory hosts), itself left out (it comes in on loopback); none when no
    other host comes through."""
    others = tuple(dict.fromkeys(c for c in clients if c != here))
    return [Door(what, tuple(ports), others)] if others else []
