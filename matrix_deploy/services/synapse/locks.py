"""Synapse's virtualenv from a lock: every package pinned with its hashes, one file per Synapse version.

`locks/synapse-<version>.txt` is committed; the host installs exactly it with
`pip install --require-hashes --only-binary :all:`, so staging and production built from the same
commit get the same bytes. Regenerate or add a version (on the operator's machine, online):

    make lock SYNAPSE=1.164.0        # = .venv/bin/python -m matrix_deploy.services.synapse.locks 1.164.0

The lock is resolved with uv for every Python the supported Debian releases ship (3.11 and newer).
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

LOCKS = Path(__file__).resolve().parents[3] / "locks"
# The oldest Python of a supported release (Debian 12); the lock holds for newer ones too.
PYTHON = "3.11"


def requirements(version: str) -> list[str]:
    """What the lock is resolved from: the oidc extra brings authlib, which msc3861 mode needs; the redis
    extra, what workers talk to each other through (synapse_workers). txredisapi 1.6.0 breaks Synapse's Redis
    connection (`startedConnecting`): newer Synapse caps it below 1.6.0 itself, older ones do not."""
    return [f"matrix-synapse[oidc,redis]=={version}", "psycopg2-binary>=2.9,<3", "txredisapi<1.6.0"]


def path(version: str) -> Path:
    return LOCKS / f"synapse-{version}.txt"


def versions() -> list[str]:
    """The Synapse versions that have a lock, oldest first."""
    found = [p.stem.removeprefix("synapse-") for p in LOCKS.glob("synapse-*.txt")]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def generate(version: str) -> Path:
    """Resolve and write the lock for `version` (needs uv: `pip install uv`, and the package index)."""
    LOCKS.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".in") as source:
        source.write("\n".join(requirements(version)) + "\n")
        source.flush()
        subprocess.run(
            [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--universal", "--generate-hashes",
             "--python-version", PYTHON, "--no-header", "--no-annotate", source.name, "-o", str(path(version))],
            check=True,
        )  # fmt: skip
    return path(version)


def pins(text: str) -> dict[str, str]:
    """name -> version of every package a lock (or `pip freeze`) pins, names normalised (PEP 503)."""
    found = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            found[re.sub(r"[-_.]+", "-", name.strip()).lower()] = rest.split()[0].split(";")[0]
    return found


if __name__ == "__main__":
    for v in sys.argv[1:] or sys.exit("usage: python -m matrix_deploy.services.synapse.locks VERSION..."):
        print(generate(v))
