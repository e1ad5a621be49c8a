"""The system user a service runs as, and its hardened systemd unit."""

from jinja2 import FileSystemLoader
from pyinfra.operations import files, server

from .paths import TEMPLATES


def system_user(label: str, user: str, home: str) -> None:
    server.group(name=f"{label} group", group=user, system=True)
    server.user(
        name=f"{label} system user", user=user, group=user, system=True, home=home,
        create_home=False, ensure_home=False, shell="/usr/sbin/nologin",
    )  # fmt: skip


def unit(label: str, unit_name: str, template: str, **variables):
    """Render templates/<template> (which includes the shared hardening) as /etc/systemd/system/<unit_name>."""
    return files.template(
        name=f"{label} systemd unit",
        src=str(TEMPLATES / template),
        dest=f"/etc/systemd/system/{unit_name}",
        jinja_env_kwargs={"loader": FileSystemLoader(str(TEMPLATES))},
        **variables,
    )
