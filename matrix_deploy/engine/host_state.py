"""What a host already has, read in one command, so a run that changes nothing costs a few round trips.

pyinfra asks the host one question per fact (a stat, a sha1, the user list, dpkg -l...): about 100
round trips for a run that changes nothing. The snapshot answers them all at once, when deploy.py
starts, and the wrappers below only add an operation when the host is not already as wanted.
Skipping is safe because a path found as wanted stays so for the rest of the run (only this run's own
operation for that path would change it). What is not as wanted gets an operation that changes it in one
command (files and directories: without asking the host again what the snapshot already told), or
pyinfra's own operation, which looks again when it runs (links, removals).

The same command first takes the host's run lock (one run at a time, held as long as this run's SSH
connection lives) and waits for any remote command a dead run left running (each holds the work
lock), so what it reads is not changing under it.
"""

import difflib
import hashlib
import os
import shlex
import socket
from dataclasses import dataclass, field

from pyinfra import host, logger
from pyinfra import state as pyinfra_state
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from matrix_deploy.engine.addresses import resolve_literal
from matrix_deploy.engine.debian import RELEASES
from matrix_deploy.engine.paths import RUN_LOCK, STATE, WORK_LOCK
from matrix_deploy.engine.uploads import LOGIN_UPLOAD_DIR, secret_file

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
    os: tuple[str, str] = ("", "")  # ID and VERSION_ID from /etc/os-release
    resolved: dict[str, list[str]] = field(default_factory=dict)  # name -> addresses, as the host resolves it
    addresses: list[str] = field(default_factory=list)  # the host's own non-loopback addresses
    upload_dir: str = ""  # a directory only the login user can read (the sudo user's, or root's)
    lock: tuple[str, str] | None = None  # (busy|leftover, details) when the run could not start
    probes: dict[str, list[str]] = field(default_factory=dict)  # a role's probe -> its output lines

    def entry(self, path: str) -> Entry | None:
        if not any(
            path == r or (path.startswith(r + "/") and path[len(r) :].count("/") <= d) for r, d in self.roots.items()
        ):
            raise LookupError(f"{path} is outside the host state snapshot's roots; add it to its role's NEEDS")
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

    def below(self, directory: str) -> list[str]:
        """The paths found directly in `directory`."""
        self.entry(directory)
        return sorted(p for p in self.paths if p.rsplit("/", 1)[0] == directory)

    def forget(self, directory: str) -> None:
        """Forget what was found in `directory`: this run replaces it wholesale (a PostgreSQL cluster upgraded), so
        each file there is written, whatever the snapshot saw."""
        self.entry(directory)
        self.paths = {p: e for p, e in self.paths.items() if p != directory and not p.startswith(directory + "/")}

    def exists(self, path) -> bool:
        return self.entry(path) is not None

    def has_user(self, name, group, home, shell) -> bool:
        u, g = self.users.get(name), self.groups.get(group)
        return bool(u and g) and u[3] == g[2] and u[5] == home and u[6] == shell

    def packages_installed(self, names) -> bool:
        return all(self.packages.get(n, "").startswith("ii") for n in names)

    def unit_running(self, unit) -> bool:
        return self.units.get(unit) == ("active", "enabled")

    def resolve(self, name: str) -> list[str]:
        """`name`'s addresses as this host resolves it (an IP address is itself)."""
        try:
            return resolve_literal(name)
        except LookupError:
            pass
        if name not in self.resolved:
            raise DeployError(
                f"{_here()}: the internal address {name!r} does not resolve on this host; expected a name "
                "every host of the deployment resolves (DNS or /etc/hosts), or an IP address"
            )
        return self.resolved[name]

    def bind_address(self, name: str) -> list[str]:
        """This host's own addresses that its internal address `name` resolves to here: what services bind."""
        mine = [a for a in self.resolve(name) if a in self.addresses]
        if not mine:
            raise DeployError(
                f"{_here()}: its internal address {name!r} resolves here to {', '.join(self.resolve(name))}, "
                f"none of which is an address of this host ({', '.join(self.addresses) or 'none'}); expected a name "
                "that resolves to this host's internal address (check /etc/hosts: Debian maps the host name to "
                "127.0.1.1), or set internal_address to the address"
            )
        return mine


def _here() -> str:
    """The current host's name, for messages (also outside a pyinfra run, in tests)."""
    from pyinfra.context import ctx_host

    return host.name if ctx_host.isset() else "this host"


def sha1(content: str) -> str:
    return hashlib.sha1(content.encode()).hexdigest()


@dataclass(frozen=True)
class Needs:
    """What a role's module reads through the snapshot: paths (-> how many levels below each are listed), users,
    Debian packages (base.prepare installs them) and systemd units. Each role's module declares its NEEDS."""

    paths: dict[str, int] = field(default_factory=dict, hash=False)
    users: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    units: tuple[str, ...] = ()


class Snapshot(FactBase):
    """Every managed path under `roots` (type, owner, mode, link target, sha1 of small files), the
    given users, groups, packages and units, and whether `apt_busy` (a command) prints anything: one command."""

    def command(self, roots, names, packages, units, apt_busy, resolve=(), holder="", probes=None):
        # The release first: a host the deploy does not support is left exactly as it is, not even locked.
        supported = "|".join(f'"debian {r}"' for r in RELEASES)
        lines = [
            """os=$(. /etc/os-release 2>/dev/null; printf '%s\\t%s' "$ID" "$VERSION_ID")""",
            "printf 'O\\t%s\\n' \"$os\"",
            f'case "$(printf %s "$os" | tr "\\t" " ")" in {supported}) ;; *) exit 0;; esac',
            _locking(holder),
        ]
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
        for name in resolve:
            n = shlex.quote(name)
            lines.append(f"getent ahosts {n} | awk '{{print $1}}' | sort -u | sed 's/^/N\\t'{n}'\\t/'")
        lines.append("for a in $(hostname -I 2>/dev/null); do printf 'A\\t%s\\n' \"$a\"; done")
        # A role's own question to the host (a shell that prints its answer and exits 0), under the run lock.
        for name, probe in (probes or {}).items():
            lines.append(f"{{ {probe}\n}} 2>&1 | sed 's/^/R\\t{name}\\t/'")
        # The login user's upload directory, emptied of what a killed run left.
        lines.append(f'{LOGIN_UPLOAD_DIR} && find "$dir" -mindepth 1 -delete && printf \'T\\t%s\\n\' "$dir"')
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
            elif tag == "O":
                os_id, _, version = rest.partition("\t")
                state.os = (os_id, version)
            elif tag == "N":
                name, _, address = rest.partition("\t")
                state.resolved.setdefault(name, []).append(address)
            elif tag == "A":
                state.addresses.append(rest)
            elif tag == "T":
                state.upload_dir = rest
            elif tag == "R":
                name, _, answer = rest.partition("\t")
                state.probes.setdefault(name, []).append(answer)
            elif tag == "L":
                kind, _, details = rest.partition("\t")
                state.lock = (kind, details)
        state.paths = {p: Entry(*v, sha1=hashes.get(p)) for p, v in paths.items()}
        return state


# How long a run waits for another live run to end, and for a dead run's remote command to finish.
RUN_LOCK_WAIT = 30
WORK_LOCK_WAIT = 900


def _locking(holder: str) -> str:
    """Shell that takes the run lock for as long as this SSH connection lives, then waits for leftovers.

    The lock is held by a small background process that inherits the lock's file descriptor and
    exits when the sshd process serving this connection does: when the run ends, and when the
    operator's side dies (its TCP connection closes). Without an sshd ancestor (a local run) it is
    not held past this command.
    """
    return f"""
install -d -m 700 {STATE}
exec 9>>{RUN_LOCK}
conn=; p=$$
while [ "${{p:-0}}" -gt 1 ]; do
    case "$(cat /proc/$p/comm 2>/dev/null)" in sshd|sshd-session) conn=$p; break;; esac
    p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status 2>/dev/null)
done
if ! flock -w {RUN_LOCK_WAIT} 9; then
    printf 'L\\tbusy\\t%s\\n' "$(cat {RUN_LOCK}.holder 2>/dev/null)"
    exit 0
fi
if [ -n "$conn" ]; then
    setsid sh -c "while kill -0 $conn 2>/dev/null; do sleep 1; done" </dev/null >/dev/null 2>&1 &
    printf '%s since %s\\n' {shlex.quote(holder)} "$(date -u +%FT%TZ)" > {RUN_LOCK}.holder
fi
exec 9>&-
if ! flock -w {WORK_LOCK_WAIT} {WORK_LOCK} true; then
    printf 'L\\tleftover\\t%s\\n' "a command of an earlier run still holds {WORK_LOCK} after {WORK_LOCK_WAIT} s"
    exit 0
fi
"""


_snapshots: dict[str, HostState] = {}


def read(needs: Needs, apt_busy: str, resolve=(), probes: dict[str, str] | None = None) -> HostState:
    """Take this host's snapshot (once per run) of what `needs` names.

    Refuses (DeployError) when another run holds the host or a dead run's command never finished.
    """
    holder = f"a matrix-deploy run from {socket.gethostname()} (pid {os.getpid()})"
    state = host.get_fact(
        Snapshot, roots=needs.paths, names=list(needs.users), packages=list(needs.packages), units=list(needs.units),
        apt_busy=apt_busy,
        resolve=sorted(set(resolve)), holder=holder, probes=probes or {},
    )  # fmt: skip
    if state.lock and state.lock[0] == "busy":
        raise DeployError(
            f"{host.name}: another deploy is running against this host ({state.lock[1] or 'holder unknown'}); "
            f"nothing was changed. Wait for it to finish and run again. If that run is dead but its SSH "
            f"connection lingers on the host, end that connection's sshd process there."
        )
    if state.lock:
        raise DeployError(f"{host.name}: {state.lock[1]}; nothing was changed. Find it with `ps -ef` there.")
    state.roots = dict(needs.paths)
    _snapshots[host.name] = state
    return state


def current() -> HostState:
    return _snapshots[host.name]


# Operations added only when the host is not already as wanted (see the module docstring).


@operation()
def _directory(path: str, user=None, group=None, mode=None):
    """A directory with its owner and mode, in one command (files.directory asks the host about it first)."""
    p = shlex.quote(path)
    command = f"mkdir -p {p}"
    if user or group:
        command += f" && chown {shlex.quote(user + ':' + group if user and group else user or ':' + group)} {p}"
    if mode:
        command += f" && chmod {mode} {p}"
    yield StringCommand(command)


def directory(name, path, user=None, group=None, mode=None):
    if not current().is_dir(path, user, group, mode):
        return _directory(name=name, path=path, user=user, group=group, mode=mode)


def put(name, dest, content: str, user=None, group=None, mode=None, diff=True):
    """A non-secret file with `content`; with --diff its change is shown, unless `diff` is False (a candidate
    whose change install_checked shows against the live file)."""
    if not current().is_file(dest, content, user, group, mode):
        if diff and pyinfra_state.config.DIFF:
            show_diff(dest, content)
        return secret_file(name=name, path=dest, content=content, user=user, group=group, mode=mode,
                           upload_dir=current().upload_dir)  # fmt: skip


def show_diff(path: str, content: str, secrets=()) -> None:
    """With --diff: the change to the live `path` as a unified diff, any secret value masked.

    Uploads here never show pyinfra's diff, and a candidate is staged under another name, so pyinfra's own
    diff (of the candidate) would not show what goes live. Rendered configs name secrets by file; the masking
    is a second line of defence.
    """
    live = host.get_fact(FileContents, path=path) or []
    diff = difflib.unified_diff([line + "\n" for line in live], content.splitlines(keepends=True),
                                fromfile=f"{path} (live)", tofile=f"{path} (new)")  # fmt: skip
    masked = sorted((v for v in secrets if len(v) >= 8), key=len, reverse=True)
    host.log(f"Will modify {path}", logger.info)
    for line in diff:
        for value in masked:
            line = line.replace(value, "<secret>")
        logger.info("  %s", line.rstrip("\n"))


def secret(name, path, content: str, user, group, mode="400"):
    """A secret file: uploaded, never diffed (secret_files.secret_file)."""
    if not current().is_file(path, content, user, group, mode):
        return secret_file(
            name=name, path=path, content=content, user=user, group=group, mode=mode, upload_dir=current().upload_dir
        )


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
