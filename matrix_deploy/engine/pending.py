"""Work that is due on a host, recorded there before it is done: a service's restart (once, in order, only when
something it reads changed), a switch to a new version, a database dump before a migration (and MAS's migrations,
which are due with its restart). One marker file per piece of work, named after it (`synapse`, `mas-backup`,
`synapse-worker-generic-1`...).

A marker is written before anything else of its stage happens, so a run that dies before the work is done leaves
it and the next run still does it: pyinfra forgets what changed, the host does not. The work's own command
removes its marker once done. (The directory keeps its first name, restart-pending, so that markers left by an
older matrix-deploy still count.)

When nothing can change in this run (host_state found everything as wanted) and no work is pending, these add
no operations at all, so an unchanged deployment shows no "conditional changes" when pyinfra asks for
confirmation.
"""

import shlex

from pyinfra import host
from pyinfra.operations import files
from pyinfra.operations.util import any_changed

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.paths import STATE

MARKERS = f"{STATE}/restart-pending"


def clear(work: str) -> str:
    """The shell command that removes `work`'s marker: the last step of the command that does the work."""
    return f"rm -f {MARKERS}/{shlex.quote(work)}"


def mark(service: str, changes: list, due: str = "must restart"):
    """Record that `service` must restart when any of the `changes` operations changed something.

    `changes` may hold None: what host_state found already as wanted has no operation. With no
    operation left, nothing can change: returns None.
    """
    changes = [c for c in changes if c is not None]
    if not changes:
        return None
    return files.file(
        name=f"Record that {service} {due}",
        path=f"{MARKERS}/{service}",
        present=True,
        touch=False,
        create_remote_dir=True,
        _if=any_changed(*changes),
    )


def mark_now(service: str, due: str):
    """Record that `service` must restart, unconditionally: for what the host's snapshot already shows is due
    (a version link to switch), before anything else of the stage happens."""
    return files.file(name=f"Record that {service} {due}", path=f"{MARKERS}/{service}", present=True, touch=False,
                      create_remote_dir=True)  # fmt: skip


# Work an earlier stage of this run makes due on this host: (host, work) -> its operations. PostgreSQL's upgrade
# stops MAS and Synapse (their markers written on the host first); their own stages start them, in the usual order.
_made_due: dict[tuple[str, str], list] = {}


def made_due(work: str, operation) -> None:
    """Record that `work` is due on this host when `operation` changes something (it writes the marker itself)."""
    if operation is not None:
        _made_due.setdefault((host.name, work), []).append(operation)


def due(service: str, marked):
    """A condition for `_if`: a restart of `service` is pending (from this run or an interrupted one).

    None when it cannot be: no marker on the host and nothing to mark in this run. `marked` is one
    mark() operation or a list of them (a service marked at several points of its stage).
    """
    recorded = host_state.current().exists(f"{MARKERS}/{service}")
    marks = [m for m in (marked if isinstance(marked, list) else [marked]) if m is not None]
    marks += _made_due.get((host.name, service), [])
    if not marks:
        return (lambda: True) if recorded else None
    return lambda: recorded or any(m.did_change() for m in marks)


def _switch(path: str, target: str) -> str:
    """Atomically (a new link beside the old one, renamed over it), and only when it points elsewhere: the
    link's change time then tells when the switch happened."""
    return (
        f'[ "$(readlink {path})" = {target} ] || {{ ln -sfn {target} {path}.switch && mv -Tf {path}.switch {path}; }}'
    )


def restart(
    service: str, unit: str, ready: str, marked, action: str = "restart", switch: tuple[str, str] | None = None
):
    """Restart `unit` if a restart is pending, wait until `ready` succeeds, then clear the marker.

    `switch` = (link, target): the link the unit runs from is pointed at the new version only here, right
    before the restart, so the old version serves from its own files until then (nothing of the new one
    is loaded by the old process). `ready` is a shell command polled every 0.1 s for up to 90 s; on failure
    the unit's journal is shown and the deploy stops here, so later services are not touched.
    """
    link = _switch(*switch) if switch else ""
    script = f"""
set -e
systemctl daemon-reload
systemctl enable --quiet {unit}
{link}
systemctl {action} {unit}
for i in $(seq 900); do
    if {ready} >/dev/null 2>&1; then {clear(service)}; exit 0; fi
    sleep 0.1
done
echo "{service} did not become healthy after {action}: {ready}" >&2
journalctl -u {unit} -n 40 --no-pager >&2 || true
exit 1
"""
    condition = due(service, marked)
    if condition is not None:
        return remote.shell(name=f"Restart {service} and wait until it is healthy", commands=[script], _if=condition)


def switch(service: str, link: str, target: str):
    """Point `link` at `target` and clear `service`'s marker, for a host that runs no process of `service`
    itself but instances that follow it (Synapse's workers on a host of their own): no restart here."""
    return remote.shell(
        name=f"{service} switches to {target}",
        commands=[f"{_switch(link, target)}\n{clear(service)}"],
    )
