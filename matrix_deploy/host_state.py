"""What a host already has, read in one command, so a run that changes nothing costs a few round trips.

pyinfra asks the host one question per fact (a stat, a sha1, the user list, dpkg -l...): about 100
round trips for a run that changes nothing. The snapshot answers them all at once, when deploy.py
starts, and the wrappers below only add an operation when the host is not already as wanted.
Skipping is safe because a path found as wanted stays so for the rest of the run (only this run's own
operation for that path would change it); whatever is not as wanted goes through pyinfra's operation,
which looks again when it runs.
"""

import hashlib
import shlex
from dataclasses import dataclass, field
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.operations import files

from .secret_files import secret_file

# Files larger than this are listed but not hashed (release archives, binaries).
HASH_LIMIT = "-256k"


@dataclass(frozen=True)
class Entry:
    kind: str  # f(ile), d(irectory), l(ink)
    user: str
    group: str
    mode: int
    target: str  # a link's target
    sha1: str | None = None


@dataclass
class HostState:
    roots: dict[str, int]  # path -> how many levels below it were listed
    paths: dict[str, Entry] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)  # name -> passwd fields
    groups: dict[str, list[str]] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)  # name -> dpkg status (ii = installed)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (is-active, is-enabled)
    apt_busy: bool = False

    def entry(self, path: str) -> Entry | None:
        if not any(
            path == r or (path.startswith(r + "/") and path[len(r) :].count("/") <= d) for r, d in self.roots.items()
        ):
            raise LookupError(f"{path} is outside the host state snapshot's roots; add it to paths.managed()")
        return self.paths.get(path)

    def _owned(self, e: Entry | None, kind: str, user, group, mode) -> bool:
        return (
            e is not None
            and e.kind == kind
            and (user is None or e.user == user)
            and (group is None or e.group == group)
            and (mode is None or e.mode == int(str(mode), 8))
        )

    def is_dir(self, path, user=None, group=None, mode=None) -> bool:
        return self._owned(self.entry(path), "d", user, group, mode)

    def is_file(self, path, content: str, user=None, group=None, mode=None) -> bool:
        e = self.entry(path)
        return self._owned(e, "f", user, group, mode) and e.sha1 == sha1(content)

    def is_link(self, path, target) -> bool:
        e = self.entry(path)
        return e is not None and e.kind == "l" and e.target == target

    def exists(self, path) -> bool:
        return self.entry(path) is not None

    def has_user(self, name, group, home, shell) -> bool:
        u, g = self.users.get(name), self.groups.get(group)
        return bool(u and g) and u[3] == g[2] and u[5] == home and u[6] == shell

    def packages_installed(self, names) -> bool:
        return all(self.packages.get(n, "").startswith("ii") for n in names)

    def unit_running(self, unit) -> bool:
        return self.units.get(unit) == ("active", "enabled")


def sha1(content: str) -> str:
    return hashlib.sha1(content.encode()).hexdigest()


class Snapshot(FactBase):
    """Every managed path under `roots` (type, owner, mode, link target, sha1 of small files), the
    given users, groups, packages and units, and whether `apt_busy` (a command) prints anything: one command."""

    def command(self, roots, names, packages, units, apt_busy):
        lines = []
        for root, depth in roots.items():
            r = shlex.quote(root)
            lines.append(f"find {r} -maxdepth {depth} -printf 'P\\t%y\\t%u\\t%g\\t%m\\t%l\\t%p\\n' 2>/dev/null")
            lines.append(
                f"find {r} -maxdepth {depth} -type f -size {HASH_LIMIT} -print0 2>/dev/null | xargs -0 -r sha1sum | sed 's/^/H\\t/'"
            )
        quoted = " ".join(map(shlex.quote, names))
        lines.append(f"getent passwd {quoted} | sed 's/^/U\\t/'")
        lines.append(f"getent group {quoted} | sed 's/^/G\\t/'")
        if packages:
            pkgs = " ".join(map(shlex.quote, packages))
            lines.append(f"dpkg-query -W -f='K\\t${{Package}}\\t${{db:Status-Abbrev}}\\n' {pkgs} 2>/dev/null")
        for unit in units:
            u = shlex.quote(unit)
            lines.append(
                f'printf \'S\\t%s\\t%s\\t%s\\n\' {u} "$(systemctl is-active {u})" "$(systemctl is-enabled {u})"'
            )
        lines.append(f'busy=$({apt_busy}); [ -z "$busy" ] || echo B')
        return "\n".join(lines) + "\ntrue"

    def process(self, output):
        paths, hashes, state = {}, {}, HostState(roots={})
        for line in output:
            tag, _, rest = line.partition("\t")
            if tag == "P":
                kind, user, group, mode, target, path = rest.split("\t", 5)
                paths[path] = (kind, user, group, int(mode, 8), target)
            elif tag == "H":
                digest, _, path = rest.partition("  ")
                hashes[path] = digest
            elif tag == "U":
                fields = rest.split(":")
                state.users[fields[0]] = fields
            elif tag == "G":
                fields = rest.split(":")
                state.groups[fields[0]] = fields
            elif tag == "K":
                name, _, status = rest.partition("\t")
                state.packages[name] = status
            elif tag == "S":
                unit, active, enabled = rest.split("\t")
                state.units[unit] = (active, enabled)
            elif tag == "B":
                state.apt_busy = True
        state.paths = {p: Entry(*v, sha1=hashes.get(p)) for p, v in paths.items()}
        return state


_snapshots: dict[str, HostState] = {}


def read(roots: dict[str, int], apt_busy: str, names=(), packages=(), units=()) -> HostState:
    """Take this host's snapshot (once per run); `roots` maps each directory or file to its depth."""
    state = host.get_fact(
        Snapshot, roots=roots, names=list(names), packages=list(packages), units=list(units), apt_busy=apt_busy
    )
    state.roots = dict(roots)
    _snapshots[host.name] = state
    return state


def current() -> HostState:
    return _snapshots[host.name]


# Operations added only when the host is not already as wanted (see the module docstring).


def directory(name, path, user=None, group=None, mode=None):
    if not current().is_dir(path, user, group, mode):
        return files.directory(name=name, path=path, user=user, group=group, mode=mode)


def put(name, dest, content: str, user=None, group=None, mode=None):
    """A non-secret file with `content` (pyinfra shows its diff with --diff)."""
    if not current().is_file(dest, content, user, group, mode):
        return files.put(name=name, src=StringIO(content), dest=dest, user=user, group=group, mode=mode)


def secret(name, path, content: str, user, group, mode="400"):
    """A secret file: uploaded, never diffed (secret_files.secret_file)."""
    if not current().is_file(path, content, user, group, mode):
        return secret_file(name=name, path=path, content=content, user=user, group=group, mode=mode)


def link(name, path, target):
    if not current().is_link(path, target):
        return files.link(name=name, path=path, target=target)


def absent(name, path):
    entry = current().entry(path)
    if entry is not None:
        return (
            files.link(name=name, path=path, present=False)
            if entry.kind == "l"
            else files.file(name=name, path=path, present=False)
        )
