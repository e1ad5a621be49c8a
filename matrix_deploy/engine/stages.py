"""Stage barriers: an operation every host runs at the same place, so no host starts the next stage early.

pyinfra makes one node of the operations that different hosts add from the same line (and loop position),
and runs a node only after every host's operations before it; operations of different hosts that share no
node run in whatever order their depth gives. An operation with no command is such a node for free: it
sends nothing to the host and reports no change.
"""

from pyinfra import host, inventory
from pyinfra.api import operation


@operation(is_idempotent=True)
def _barrier(stage: str):
    host.noop(f"{stage}: done on every host")
    yield from ()


def done(stage: str) -> None:
    """Called unconditionally once per stage, at the same place on every host concerned (deploy.py: all).

    One host runs its operations in order anyway: no barrier there, so pyinfra's confirmation for an
    unchanged single-host deployment lists no operation at all.
    """
    if len(inventory) > 1:
        _barrier(name=f"{stage}: done on every host", stage=stage)


def in_turn(what: str, items: list, host_of):
    """This host's items of `items` (`host_of(item)` names an item's host), each in its turn across every host
    that calls this at the same place: what is added for an item runs after what every host added for the
    items before it (a barrier after each), so instances restart one at a time, in `items`' order."""
    for i, item in enumerate(host.loop(items)):
        if host_of(item) == host.name:
            yield item
        done(f"{what} {i + 1} of {len(items)}")
