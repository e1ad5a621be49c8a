"""The scheduled backups' settings: where the restic repository is, when the backup runs, how many to keep."""

import re

from matrix_deploy.operator.declare import Option, bad

# restic's repository kinds this deploy supports: a local directory on the host, or SFTP (user@host:/path).
LOCAL = re.compile(r"^/[\w./-]*$")
SFTP = re.compile(
    r"^sftp:(?P<user>[a-z_][a-z0-9_.-]{0,31})@(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<path>/[\w./-]*)$"
)
TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def repository(key, value, problems):
    """A local absolute path on the hosts or sftp:user@host:/absolute/path; unset: no backups."""
    if value is None:
        return None
    expected = (
        "an absolute directory on the hosts (/srv/backup/matrix) or an SFTP repository sftp:user@host:/absolute/path"
        " (letters, digits and ./_- only)"
    )
    if not isinstance(value, str) or not (LOCAL.match(value) or SFTP.match(value)) or "/../" in value + "/":
        return bad(problems, key, value, expected)
    return value.rstrip("/") or value


def time_of_day(key, value, problems):
    if not isinstance(value, str) or not TIME.match(value):
        return bad(problems, key, value, "a time of day HH:MM (24 hours, the hosts' local time), like '03:00'")
    return value


def keep(what: str):
    def check(key, value, problems):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return bad(problems, key, value, f"a whole number of {what} backups to keep, 0 or more")
        return value

    return check


OPTIONS = (
    Option(
        "backup_repository", None,
        "restic repository of the scheduled, encrypted backups: an absolute directory on each host with data, or "
        "`sftp:user@host:/path` (root's SSH key and known_hosts on the hosts are yours to set up); unset: no "
        "scheduled backups (see Backups)",
        repository,
    ),
    Option("backup_time", "03:00", "time of day (HH:MM, the hosts' local time) of the daily backup", time_of_day),
    Option("backup_keep_daily", 7, "how many daily backups `restic forget --prune` keeps", keep("daily")),
    Option("backup_keep_weekly", 4, "how many weekly backups `restic forget --prune` keeps", keep("weekly")),
)  # fmt: skip
