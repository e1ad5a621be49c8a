"""Feeds the lab the tests' MAS stand-in release (the real one cannot be downloaded here).

Builds the stand-in tarball into .lab/mas/ and records its path and sha256 in
.lab/mas-release.json, which inventories/lab.py passes to the product's normal local-file
install path (mas_release_file + mas_release_sha256). Run: python -m tests.lab_release
"""

import json

from matrix_deploy.lab import LAB_DIR
from tests.mas_standin.build import build

RELEASE_JSON = LAB_DIR / "mas-release.json"


def prepare(version: str = "1.22.0") -> dict:
    path, sha256 = build(LAB_DIR / f"mas-{version}", version)
    release = {"file": str(path), "sha256": sha256}
    LAB_DIR.mkdir(exist_ok=True)
    RELEASE_JSON.write_text(json.dumps(release, indent=2) + "\n")
    return release


if __name__ == "__main__":
    print(json.dumps(prepare()))
