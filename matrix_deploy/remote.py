"""Remote commands of a run: each holds the host's work lock while it runs.

When an operator's run dies (SSH drops, laptop closes), the command it started goes on running on the
host, still holding the lock; the next run's host_state snapshot waits for it before reading the host.
"""

import shlex

from pyinfra.operations import server

from .paths import WORK_LOCK


def shell(name: str, commands: list[str], **kwargs):
    """server.shell running each command under the work lock (flock: its children inherit the lock)."""
    return server.shell(name=name, commands=[f"flock {WORK_LOCK} sh -c {shlex.quote(c)}" for c in commands], **kwargs)
