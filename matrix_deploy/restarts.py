"""Restarts that happen once, in order, only when something the service reads changed.

A restart that is due is recorded on the host (a marker file) before anything else happens, so a
run that dies before restarting leaves the marker and the next run still restarts the service:
pyinfra forgets what changed, the host does not.

When nothing can change in this run (host_state found everything as wanted) and no restart is
pending, these add no operations at all, so an unchanged deployment shows no "conditional changes"
when pyinfra asks for confirmation.
"""

from pyinfra.operations import files
from pyinfra.operations.util import any_changed

from . import host_state, remote
from .paths import STATE

MARKERS = f"{STATE}/restart-pending"


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


def due(service: str, marked):
    """A condition for `_if`: a restart of `service` is pending (from this run or an interrupted one).

    None when it cannot be: no marker on the host and nothing to mark in this run. `marked` is one
    mark() operation or a list of them (a service marked at several points of its stage).
    """
    pending = host_state.current().exists(f"{MARKERS}/{service}")
    marks = [m for m in (marked if isinstance(marked, list) else [marked]) if m is not None]
    if not marks:
        return (lambda: True) if pending else None
    return lambda: pending or any(m.did_change() for m in marks)


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
    marker = f"{MARKERS}/{service}"
    link = _switch(*switch) if switch else ""
    script = f"""
set -e
systemctl daemon-reload
systemctl enable --quiet {unit}
{link}
systemctl {action} {unit}
for i in $(seq 900); do
    if {ready} >/dev/null 2>&1; then rm -f {marker}; exit 0; fi
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
        commands=[f"{_switch(link, target)}\nrm -f {MARKERS}/{service}"],
    )
