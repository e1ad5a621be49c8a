"""The MAS release the lab deploys, recorded in .lab/mas-release.json (file, sha256, kind) for inventories/lab.py,
which feeds it to the product's normal local-file install path (mas_release_file + mas_release_sha256).

`MAS_RELEASE=FILE`: that release tarball (an official `mas-cli-x86_64-linux.tar.gz`, or one built from source with
../shared/tools/build-real-mas.sh), for the version it is (`MAS_RELEASE_VERSION`, 1.22.0 by default). Otherwise,
and for any other version a test asks for, the tests' MAS stand-in (a test double: the real release cannot be
downloaded here), built by its own command. Run: python -m matrix_deploy.lab.release
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from matrix_deploy.lab import LAB_DIR, PROJECT_DIR, LabError

RELEASE_JSON = LAB_DIR / "mas-release.json"


def real_release() -> tuple[Path, str] | None:
    """(the tarball MAS_RELEASE names, its version), when set."""
    given = os.environ.get("MAS_RELEASE")
    if not given:
        return None
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise LabError(f"MAS_RELEASE={given}: no such file; expected a MAS release tarball (mas-cli-*-linux.tar.gz)")
    return path, os.environ.get("MAS_RELEASE_VERSION", "1.22.0")


def prepare(version: str = "1.22.0") -> dict:
    real = real_release()
    if real and real[1] == version:
        path, kind = real[0], "real"
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        built = subprocess.run(
            [sys.executable, "-m", "tests.support.mas_standin.build", str(LAB_DIR / f"mas-{version}"), "--version", version],
            cwd=PROJECT_DIR, capture_output=True, text=True,
        )  # fmt: skip
        if built.returncode != 0:
            raise LabError(f"building the MAS stand-in {version} failed: {(built.stderr or built.stdout).strip()}")
        out = built.stdout.split()
        path, sha256, kind = Path(out[0]), out[1], "stand-in"
    release = {"file": str(path), "sha256": sha256, "kind": kind, "version": version}
    LAB_DIR.mkdir(exist_ok=True)
    RELEASE_JSON.write_text(json.dumps(release, indent=2) + "\n")
    return release


if __name__ == "__main__":
    print(json.dumps(prepare()))
