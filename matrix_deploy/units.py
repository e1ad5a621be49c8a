"""The system user a service runs as, and its hardened systemd unit."""

from pyinfra.operations import server

from . import host_state
from .render import render

NOLOGIN = "/usr/sbin/nologin"


def system_user(label: str, user: str, home: str) -> None:
    """A system user and its group of the same name: no login, home not created here."""
    if host_state.current().has_user(user, user, home, NOLOGIN):
        return
    server.group(name=f"{label} group", group=user, system=True)
    server.user(
        name=f"{label} system user", user=user, group=user, system=True, home=home,
        create_home=False, ensure_home=False, shell=NOLOGIN,
    )  # fmt: skip


def unit(label: str, unit_name: str, template: str, **variables):
    """Render templates/<template> (which includes the shared hardening) as /etc/systemd/system/<unit_name>."""
    return host_state.put(f"{label} systemd unit", f"/etc/systemd/system/{unit_name}", render(template, **variables))


def drop_in(label: str, unit_name: str, template: str, **variables):
    """Sandbox a unit a Debian package ships: templates/<template> as /etc/systemd/system/<unit_name>.d/matrix-deploy.conf."""
    return host_state.put(
        f"{label} systemd sandboxing",
        f"/etc/systemd/system/{unit_name}.d/matrix-deploy.conf",
        render(template, **variables),
    )
