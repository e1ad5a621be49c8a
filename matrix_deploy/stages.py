"""Stage barriers: an operation every host runs at the same place, so no host starts the next stage early.

pyinfra makes one node of the operations that different hosts add from the same line, and runs a node
only after every host's operations before it. An operation with no command is such a node for free:
it sends nothing to the host and reports no change.
"""

from pyinfra import host, inventory
from pyinfra.api import operation


@operation(is_idempotent=True)
def _barrier(stage: str):
    host.noop(f"{stage}: done on every host")
    yield from ()


def done(stage: str) -> None:
    """Called unconditionally from deploy.py once per stage, on every host.

    One host runs its operations in order anyway: no barrier there, so pyinfra's confirmation for an
    unchanged single-host deployment lists no operation at all.
    """
    if len(inventory) > 1:
        _barrier(name=f"{stage}: done on every host", stage=stage)
