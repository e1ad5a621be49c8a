"""What a service wants on a host, said as plain data; `apply` makes the host so.

A service first says what it wants (its system user, directories, files and secrets, what must be gone, the
restart they call for) from its settings alone; the engine then compares each with the host's snapshot, adds
operations only for what differs, in the order given, and marks and restarts the unit when one changed. The
service renders, the engine applies: nothing of the one calls back into the other.
"""

from dataclasses import dataclass

from matrix_deploy.engine import host_state, pending


@dataclass(frozen=True)
class SystemUser:
    """A system user and its group of the same name, no login, with `home` (not created here)."""

    label: str
    user: str
    home: str


@dataclass(frozen=True)
class Directory:
    name: str
    path: str
    user: str
    group: str
    mode: str


@dataclass(frozen=True)
class File:
    """A file with `content`. A secret is uploaded from a private staging directory and never diffed."""

    name: str
    path: str
    content: str
    user: str | None = None  # None: whatever the host has (root's, for a new file)
    group: str | None = None
    mode: str | None = None
    secret: bool = False


@dataclass(frozen=True)
class Absent:
    name: str
    path: str


@dataclass(frozen=True)
class OnlyIn:
    """Nothing in `directory` but `keep`: any other file found there is removed, each named `name`."""

    name: str  # with {path}
    directory: str
    keep: frozenset[str]


Want = SystemUser | Directory | File | Absent | OnlyIn


@dataclass(frozen=True)
class Restart:
    """`unit` restarts when one of the service's files changed (or an earlier run left the restart due), and
    must pass `ready` before the run goes on; `marker` names the pending-work marker on the host."""

    marker: str
    unit: str
    ready: str


def apply(wants: list[Want]) -> list:
    """Operations for what differs from the host's snapshot, in the order given. Returns the operations of the
    files (None for a file already as wanted): what a restart depends on. Users and directories are not among
    them: a unit does not restart because its directory's mode was set."""
    from matrix_deploy.engine import units  # units makes its files with this module's File

    changes = []
    state = host_state.current()
    for want in wants:
        if isinstance(want, SystemUser):
            units.system_user(want.label, want.user, want.home)
        elif isinstance(want, Directory):
            host_state.directory(want.name, want.path, want.user, want.group, want.mode)
        elif isinstance(want, File) and want.secret:
            changes.append(host_state.secret(want.name, want.path, want.content, want.user, want.group, want.mode))
        elif isinstance(want, File):
            changes.append(host_state.put(want.name, want.path, want.content, want.user, want.group, want.mode))
        elif isinstance(want, Absent):
            changes.append(host_state.absent(want.name, want.path))
        elif isinstance(want, OnlyIn):
            for path in state.below(want.directory):
                if path not in want.keep:
                    changes.append(host_state.absent(want.name.format(path=path), path))
    return changes


def restart(wanted: Restart, changes: list, action: str = "restart") -> None:
    """Record the restart (or `action`) `changes` call for, then do it and wait until ready (pending.restart)."""
    pending.restart(wanted.marker, wanted.unit, wanted.ready, pending.mark(wanted.marker, changes), action)
