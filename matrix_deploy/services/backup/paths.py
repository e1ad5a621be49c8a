"""Where the scheduled backups live on the hosts: all root only, in the deploy's 0700 state directory."""

from matrix_deploy.engine.paths import STATE

BACKUP_SCRIPT = f"{STATE}/backup.sh"  # what the unit runs
RESTORE_SCRIPT = f"{STATE}/restore.sh"  # what `matrix-deploy restore` runs (the deploy uploads it)
PASSWORD_FILE = f"{STATE}/backup-password"  # RESTIC_PASSWORD_FILE (secret_files.py)
STAMP = f"{STATE}/backup-last-success"  # the time (seconds since the epoch) of the last good backup
STAGING = f"{STATE}/backup-staging"  # the databases' dumps, while a backup runs (0700)
RESTORE_DIR = f"{STATE}/restore"  # a snapshot's files, while a restore runs (0700)
RESTORE_PENDING = f"{STATE}/restart-pending/restore"  # a restore begun and not finished: holds its snapshot
CACHE = "/var/cache/matrix-deploy-restic"  # restic's cache (0700)
UNIT = "matrix-deploy-backup"  # .service (oneshot) and .timer
