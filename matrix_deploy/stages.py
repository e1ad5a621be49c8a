"""Stage barriers: an operation every host runs at the same place, so no host starts the next stage early.

pyinfra makes one node of the operations that different hosts add from the same line, and runs a node
only after every host's operations before it. An operation with no command is such a node for free:
it sends nothing to the host and reports no change.
"""

from pyinfra import host
from pyinfra.api import operation


@operation(is_idempotent=True)
def _barrier(stage: str):
    host.noop(f"{stage}: done on every host")
    yield from ()


def done(stage: str) -> None:
    """Called unconditionally from deploy.py once per stage, on every host."""
    _barrier(name=f"{stage}: done on every host", stage=stage)
