"""The `matrix-deploy` command: `verify INVENTORY` (a deployed homeserver, from outside), `restore INVENTORY` (the
data back from the backups, then the deploy) and `lab ...`.

Deploys themselves are pyinfra's: `pyinfra INVENTORY deploy.py`.
"""

import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        from matrix_deploy.operator import verify

        return verify.main(argv[1:])
    if argv[:1] == ["restore"]:
        from matrix_deploy.operator import restore

        return restore.main(argv[1:])
    if argv[:1] == ["lab"]:
        # The lab tool is its own program (`python -m matrix_deploy.lab`): the console command starts it rather
        # than importing the lab's command line into the operator's side.
        return subprocess.run([sys.executable, "-m", "matrix_deploy.lab", *argv[1:]]).returncode
    print("usage: matrix-deploy verify INVENTORY [--connect ADDRESS] [--ca-file PEM]\n"
          "       matrix-deploy restore INVENTORY [--snapshot ID] [--replace]\n"
          "       matrix-deploy lab up|deploy|down|status|welcome ...", file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main())
