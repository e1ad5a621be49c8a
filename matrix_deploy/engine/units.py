"""The system user a service runs as, and its hardened systemd unit."""

import shlex

from pyinfra.api import StringCommand, operation

from matrix_deploy.engine import host_state, wants
from matrix_deploy.engine.render import render
from matrix_deploy.engine.wants import File

NOLOGIN = "/usr/sbin/nologin"


@operation()
def _system_user(user: str, home: str):
    q, h = shlex.quote(user), shlex.quote(home)
    # One command for both (server.group and server.user ask the host about groups and users first).
    yield StringCommand(
        f"{{ getent group {q} >/dev/null || groupadd --system {q}; }} && if getent passwd {q} >/dev/null;"
        f" then usermod -g {q} -d {h} -s {NOLOGIN} {q}; else useradd --system -g {q} -d {h} -M -s {NOLOGIN} {q}; fi"
    )


def system_user(label: str, user: str, home: str) -> None:
    """A system user and its group of the same name: no login, home not created here."""
    if not host_state.current().has_user(user, user, home, NOLOGIN):
        _system_user(name=f"{label} system user and group", user=user, home=home)


def unit_file(label: str, unit_name: str, template: str, **variables) -> File:
    """templates/<template> (which includes the shared hardening) as /etc/systemd/system/<unit_name>."""
    return File(f"{label} systemd unit", f"/etc/systemd/system/{unit_name}", render(template, **variables))


def unit(label: str, unit_name: str, template: str, **variables):
    return wants.apply([unit_file(label, unit_name, template, **variables)])[0]


def drop_in_file(label: str, unit_name: str, template: str, **variables) -> File:
    """Sandbox a unit a Debian package ships: templates/<template> as /etc/systemd/system/<unit_name>.d/matrix-deploy.conf."""
    return File(f"{label} systemd sandboxing", f"/etc/systemd/system/{unit_name}.d/matrix-deploy.conf",
                render(template, **variables))  # fmt: skip


def drop_in(label: str, unit_name: str, template: str, **variables):
    return wants.apply([drop_in_file(label, unit_name, template, **variables)])[0]
