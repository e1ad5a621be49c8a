"""The backups' secret file: the restic repository's password (RESTIC_PASSWORD_FILE), root only, on each host
with data."""

from matrix_deploy.operator.declare import SecretFile
from matrix_deploy.services.backup.paths import PASSWORD_FILE


def _backups(s) -> bool:
    return s.backups


SECRET_FILES = (SecretFile("backup", PASSWORD_FILE, "backup_password", _backups),)
