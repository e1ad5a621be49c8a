"""`matrix-deploy restore INVENTORY [--snapshot ID] [--replace]`: the deployment's data back from its backups.

The normal deploy (`pyinfra INVENTORY deploy.py`), told to restore: after PostgreSQL's stage and before MAS and
Synapse start, each host with data puts back its part of the snapshot (services/backup/service.py): the
databases dropped, created and restored, Synapse's one-time keys truncated, the media store. Then the deploy goes
on as always. Hosts that hold another homeserver (another server name, another signing key, users of another
server in Synapse's database) are refused unless `--replace`. A restore that dies is done again by the next run
(its marker on the host), also by a plain deploy.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from matrix_deploy.operator.inventory import build
from matrix_deploy.operator.settings import SettingsError
from matrix_deploy.services.backup.service import REPLACE_ENV, RESTORE_ENV, SNAPSHOT

ROOT = Path(__file__).resolve().parents[2]  # where deploy.py is


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="matrix-deploy restore", description=__doc__.splitlines()[0])
    parser.add_argument("inventory")
    parser.add_argument("--snapshot", default="latest", help="restic snapshot ID (default: the latest of each part)")
    parser.add_argument("--replace", action="store_true", help="replace hosts that hold another homeserver")
    args = parser.parse_args(argv)
    if not SNAPSHOT.match(args.snapshot):
        print(f"matrix-deploy restore: --snapshot {args.snapshot!r}: expected a restic snapshot ID (8 to 64 hex "
              "digits) or latest", file=sys.stderr)  # fmt: skip
        return 2
    inventory = Path(args.inventory).resolve()
    try:
        d = build(inventory)
    except SettingsError as error:
        print(f"matrix-deploy restore: {args.inventory}: the settings have problems, no host was contacted:\n{error}",
              file=sys.stderr)  # fmt: skip
        return 2
    if not d.settings.backups:
        print(f"matrix-deploy restore: {args.inventory}: backup_repository is not set: expected the restic "
              "repository the backups are in", file=sys.stderr)  # fmt: skip
        return 2
    env = {**os.environ, RESTORE_ENV: args.snapshot, REPLACE_ENV: "1" if args.replace else "0"}
    pyinfra = Path(sys.executable).with_name("pyinfra")
    command = [str(pyinfra) if pyinfra.exists() else "pyinfra", "-y", str(inventory), str(ROOT / "deploy.py")]
    return subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL).returncode
