"""Adopting across hosts: the old Synapse's database and media travel from its host (a host of the inventory with
no role) to the database host through the operator's machine, so the two hosts need not reach each other and
neither gets a key to the other.

Each file is made on the old host in the login user's own upload directory (0700, as the secrets' reads: source.py),
fetched over SFTP into a 0700 directory here (beside the secrets store, emptied by each step: a killed run's
file goes with the next), sent over SFTP into the database host's upload directory,
used there by the adoption script (templates/adoption/adopt.sh.j2, as root) and removed from all three. Nothing
goes through a host's /tmp (pyinfra's sudo staging there is readable by every local user), and no command line
holds more than paths and names.

The two steps run when their operation runs (a FunctionCommand on the database host), each after looking at the
adoption's record there, so a run killed anywhere is taken up by the next:
  copy   (record "" or copying): a dump of the old database while it serves, restored as the deployment's Synapse
         database (syn2mas check and the dry run read it there); the media copied while it serves    -> copied
  final  (record checked): the old Synapse stopped and disabled, a last dump kept on its host in backup_dir (the
         way back is its untouched database, and that dump), restored here; the media caught up     -> restored
The media go by name and size, in tar batches: what arrived is not sent again (media files never change).
"""

import io
import os
import shlex
import shutil
from contextlib import contextmanager

from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.exceptions import OperationError
from pyinfra.context import ctx_host

from matrix_deploy.engine.paths import WORK_LOCK
from matrix_deploy.engine.uploads import LOGIN_UPLOAD_DIR
from matrix_deploy.services.adoption.source import RECORD

BATCH = 256 * 1024 * 1024  # bytes of media per tar: a killed run loses at most one batch's transfer
LISTING = "find . -type f -printf '%s %P\\n'"


def missing(old: dict[str, int], new: dict[str, int]) -> list[str]:
    """The old media files the new store lacks or holds with another size (a transfer cut short), in order."""
    return sorted(name for name, size in old.items() if new.get(name) != size)


def batches(names: list[str], sizes: dict[str, int], limit: int = BATCH) -> list[list[str]]:
    """`names` in runs of at most `limit` bytes (a larger file alone)."""
    found, current, total = [], [], 0
    for name in names:
        if current and total + sizes[name] > limit:
            found.append(current)
            current, total = [], 0
        current.append(name)
        total += sizes[name]
    return [*found, current] if current else found


def sizes(lines: list[str]) -> dict[str, int]:
    """LISTING's output: name -> size."""
    found = {}
    for line in lines:
        size, _, name = line.partition(" ")
        if size.isdigit() and name:
            found[name] = int(size)
    return found


@contextmanager
def _emptied(local_dir: str):
    """The operator's relay directory, 0700 and empty, emptied again afterwards."""
    shutil.rmtree(local_dir, ignore_errors=True)
    os.makedirs(local_dir, mode=0o700)
    try:
        yield local_dir
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


class _Hosts:
    """The two hosts of one step, each reached with its own login (the inventory's user and sudo)."""

    def __init__(self, state, target, old_name: str, target_upload_dir: str, script: str):
        self.state, self.target, self.old = state, target, state.inventory.get_host(old_name)
        self.target_upload_dir, self.script = target_upload_dir, script

    def run(self, h, command: str, what: str) -> list[str]:
        with ctx_host.use(h):
            arguments, _ = pop_global_arguments(self.state, h, {})
        login = {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}
        ok, output = h.run_shell_command(StringCommand(command), **login)
        if not ok:
            said = " / ".join(line.strip() for line in output.stderr_lines[-6:] if line.strip())
            raise OperationError(f"{h.name}: {what} failed ({said or 'no output'})")
        return output.stdout_lines

    def on_target(self, step: str, what: str) -> list[str]:
        """A step of the adoption script on the database host, under its work lock like any command of a run."""
        command = f"sh {self.script} {step}"
        return self.run(self.target, f"flock {WORK_LOCK} sh -c {shlex.quote(command)}", what)

    def record(self) -> str:
        return "".join(self.run(self.target, f"cat {RECORD} 2>/dev/null || true", "reading the record")).strip()

    def relay(self, make: str, name: str, local_dir: str, what: str) -> str:
        """`make` (shell writing "$out") on the old host; the file carried to the database host's upload
        directory. Returns its path there."""
        q = shlex.quote
        made = self.run(self.old, (
            f'{LOGIN_UPLOAD_DIR}; out="$dir/{name}"; rm -f "$out"; umask 077; ({make}) && '
            '{ [ -z "${SUDO_USER:-}" ] || chown "$SUDO_USER" "$out"; } && printf "%s\\n" "$out"'
        ), what)  # fmt: skip
        there, local, here = made[-1], os.path.join(local_dir, name), f"{self.target_upload_dir}/{name}"
        try:
            if not self.old.get_file(there, local):
                raise OperationError(f"{self.old.name}: fetching {there} failed")
        finally:
            self.run(self.old, f"rm -f {q(there)}", "removing the relayed file")
        try:
            if not self.target.put_file(local, here):
                raise OperationError(f"{self.target.name}: sending {here} failed")
        finally:
            os.unlink(local)
        return here

    def bring(self, dump: str, what: str, old_media: str, local_dir: str) -> None:
        """A dump `dump` makes on the old host (shell writing "$out") restored here as the deployment's Synapse
        database, then the media this host lacks; through the emptied relay directory `local_dir`."""
        with _emptied(local_dir):
            here = self.relay(dump, "adoption.dump", local_dir, what)
            self.on_target(f"restore {shlex.quote(here)}", "restoring the old database's dump")
            self.media(old_media, local_dir)

    def media(self, old_media: str, local_dir: str) -> None:
        """The old media the database host lacks, in batches (missing, batches)."""
        q = shlex.quote
        theirs = sizes(self.run(self.old, f"cd {q(old_media)} && {LISTING}", "listing the old media"))
        ours = sizes(self.on_target("media-list", "listing the media here"))
        todo = missing(theirs, ours)
        if not todo:
            return
        (upload_dir,) = self.run(self.old, f'{LOGIN_UPLOAD_DIR}; printf "%s\\n" "$dir"', "the upload directory")[-1:]
        names = f"{upload_dir}/adoption-media.names"
        for batch in batches(todo, theirs):
            if not self.old.put_file(io.BytesIO(b"\0".join(n.encode() for n in batch) + b"\0"), names):
                raise OperationError(f"{self.old.name}: sending the media's names failed")
            tar = self.relay(f"tar -C {q(old_media)} --null -T {q(names)} -cf \"$out\"", "adoption-media.tar",
                             local_dir, "packing old media")  # fmt: skip
            self.on_target(f"media {q(tar)}", "unpacking media")
        self.run(self.old, f"rm -f {q(names)}", "removing the media's names")


def _copy(state, host, old_name, target_upload_dir, script, local_dir, port, database, old_media):
    hosts = _Hosts(state, host, old_name, target_upload_dir, script)
    if hosts.record() not in ("", "copying"):
        return
    hosts.on_target("stand copying", "recording the copy")
    hosts.bring(f"cd / && runuser -u postgres -- pg_dump -p {port} -Fc {database} > \"$out\"",
                "dumping the old database", old_media, local_dir)  # fmt: skip
    hosts.on_target("stand copied", "recording the copy")


def _final(state, host, old_name, target_upload_dir, script, local_dir, port, database, old_media, unit, backup_dir):
    hosts = _Hosts(state, host, old_name, target_upload_dir, script)
    if hosts.record() != "checked":
        return
    q = shlex.quote
    kept = f"{backup_dir}/adoption-{database}.dump"
    hosts.run(hosts.old, (
        f"systemctl disable --now --quiet {q(unit)} && install -d -m 700 {q(backup_dir)} && "
        f"{{ [ -s {q(kept)} ] || {{ (umask 077 && cd / && runuser -u postgres -- pg_dump -p {port} -Fc {database}"
        f" > {q(kept + '.partial')}) && mv -f {q(kept + '.partial')} {q(kept)}; }}; }}"
    ), f"stopping {unit} and dumping its database")  # fmt: skip
    hosts.bring(f'cp {q(kept)} "$out"', "copying the last dump", old_media, local_dir)
    hosts.on_target("stand restored", "recording the restore")


@operation(is_idempotent=False)
def copy(old_name: str, target_upload_dir: str, script: str, local_dir: str, port: int, database: str, old_media: str):
    """The old database and media copied here while the old Synapse serves (the module docstring's copy)."""
    yield FunctionCommand(_copy, (old_name, target_upload_dir, script, local_dir, port, database, old_media), {})


@operation(is_idempotent=False)
def final(old_name: str, target_upload_dir: str, script: str, local_dir: str, port: int, database: str,
          old_media: str, unit: str, backup_dir: str):  # fmt: skip
    """The old Synapse stopped, its last dump restored here and the media caught up (the module docstring's final)."""
    arguments = (old_name, target_upload_dir, script, local_dir, port, database, old_media, unit, backup_dir)
    yield FunctionCommand(_final, arguments, {})
