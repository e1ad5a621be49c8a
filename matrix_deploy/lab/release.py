"""The MAS release the lab deploys, recorded in .lab/mas-release.json (file, sha256, kind, source) for
inventories/lab.py, which feeds it to the product's normal local-file install path (mas_release_file +
mas_release_sha256).

The lab takes a real release first:
1. `MAS_RELEASE=FILE`: that release tarball (an official `mas-cli-x86_64-linux.tar.gz`, or one built from source
   with ../shared/tools/build-real-mas.sh), for the version it is (`MAS_RELEASE_VERSION`, 1.22.0 by default).
2. For `make lab` (not the tests, which never reach out): the pinned release downloaded from `mas_release_url`
   (its declared default, or `MAS_RELEASE_URL`), into .lab/mas-downloads/. MAS publishes no checksums: with
   `MAS_RELEASE_SHA256` set, the download must match it; without, the first download is trusted, its sha256 is
   shown and recorded in .lab/mas-release-pins.json, and every later download of that URL must match it. A
   mismatch stops the lab (a changed release is not deployed silently); `MAS_RELEASE_DOWNLOAD=no` skips this.
3. Otherwise, and for any other version a test asks for, the tests' MAS stand-in (a test double), built by its
   own command; the welcome says which MAS runs and why.
Run: python -m matrix_deploy.lab.release (what `make lab` does; it may download)
"""

import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

from matrix_deploy.lab import LAB_DIR, PROJECT_DIR, LabError
from matrix_deploy.operator.options import BY_NAME
from matrix_deploy.operator.settings import sha256_of

RELEASE_JSON = LAB_DIR / "mas-release.json"
PINS_JSON = LAB_DIR / "mas-release-pins.json"  # trust on first use: URL -> sha256 of its first download
DOWNLOADS = LAB_DIR / "mas-downloads"
DEFAULT_VERSION = "1.22.0"


def given_release() -> tuple[Path, str] | None:
    """(the tarball MAS_RELEASE names, its version), when set."""
    given = os.environ.get("MAS_RELEASE")
    if not given:
        return None
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise LabError(f"MAS_RELEASE={given}: no such file; expected a MAS release tarball (mas-cli-*-linux.tar.gz)")
    return path, os.environ.get("MAS_RELEASE_VERSION", DEFAULT_VERSION)


def release_url(version: str) -> str:
    template = os.environ.get("MAS_RELEASE_URL") or BY_NAME["mas_release_url"].default
    return template.replace("{version}", version)


def check_is_release(path: Path, origin: str) -> None:
    """A MAS release tarball holds the mas-cli binary; anything else (an error page, a truncated file) is refused."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError) as e:
        raise LabError(f"{origin}: not a MAS release tarball ({e})") from e
    if not any(Path(n).name == "mas-cli" for n in names):
        raise LabError(f"{origin}: not a MAS release tarball (no mas-cli in it)")


def download(version: str) -> tuple[Path, str]:
    """The release of `version` from its URL, checked against its pin (raises LabError on a mismatch), or
    OSError when it cannot be had (no network): then the caller falls back to the stand-in."""
    url = release_url(version)
    pins = json.loads(PINS_JSON.read_text()) if PINS_JSON.exists() else {}
    pinned = os.environ.get("MAS_RELEASE_SHA256") or pins.get(url)
    target = DOWNLOADS / version / "mas-cli-x86_64-linux.tar.gz"
    if pinned and target.is_file() and sha256_of(target) == pinned:
        return target, pinned  # downloaded, checked and pinned before: no network needed
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=15) as response, partial.open("wb") as out:
        while block := response.read(1 << 20):
            out.write(block)
    partial.replace(target)
    sha256 = sha256_of(target)
    if pinned and sha256 != pinned:
        raise LabError(
            f"the MAS release downloaded from {url} has sha256 {sha256}, not the pinned {pinned}: not deploying it. "
            f"If you trust the new file, remove its line from {PINS_JSON} (or set MAS_RELEASE_SHA256) and run again"
        )
    check_is_release(target, url)
    if not pinned:
        print(f"MAS release {url}: trusted on first use, sha256 {sha256} (recorded in {PINS_JSON})", file=sys.stderr)
        PINS_JSON.write_text(json.dumps({**pins, url: sha256}, indent=2) + "\n")
    return target, sha256


def build_standin(version: str) -> tuple[Path, str]:
    built = subprocess.run(
        [sys.executable, "-m", "tests.support.mas_standin.build", str(LAB_DIR / f"mas-{version}"), "--version", version],
        cwd=PROJECT_DIR, capture_output=True, text=True,
    )  # fmt: skip
    if built.returncode != 0:
        raise LabError(f"building the MAS stand-in {version} failed: {(built.stderr or built.stdout).strip()}")
    out = built.stdout.split()
    return Path(out[0]), out[1]


def real_for_all(versions) -> bool:
    """Whether MAS_RELEASE covers every one of `versions`. A test that moves one database through several MAS
    versions needs them all real or all stand-ins: real MAS cannot migrate the stand-in's schema, nor back."""
    given = given_release()
    return given is not None and set(versions) == {given[1]}


def prepare(version: str = DEFAULT_VERSION, may_download: bool = False, real: bool = True) -> dict:
    """The release of `version` the lab deploys, recorded in .lab/mas-release.json. Tests pass may_download=False:
    they use MAS_RELEASE or the stand-in, never the network; real=False: the stand-in even where MAS_RELEASE
    matches (see real_for_all)."""
    LAB_DIR.mkdir(exist_ok=True)
    given = given_release()
    release = None
    why = "MAS_RELEASE is not set" if not given else f"MAS_RELEASE is {given[1]}, not {version}"
    if given and not real:
        why = "the test moves one database through MAS versions MAS_RELEASE does not all cover"
    if given and real and given[1] == version:
        path, version = given
        release = {"file": str(path), "sha256": sha256_of(path), "kind": "real", "source": "MAS_RELEASE"}
    elif may_download and os.environ.get("MAS_RELEASE_DOWNLOAD", "yes") != "no":
        try:
            path, sha256 = download(version)
            release = {"file": str(path), "sha256": sha256, "kind": "real", "source": release_url(version)}
        except OSError as e:  # no route to the release (urllib's URLError is an OSError): the stand-in it is
            why = f"could not download {release_url(version)}: {getattr(e, 'reason', e)}"
            print(f"MAS release: {why}; using the tests' MAS stand-in", file=sys.stderr)
    if release is None:
        path, sha256 = build_standin(version)
        release = {"file": str(path), "sha256": sha256, "kind": "stand-in", "source": why}
    release["version"] = version
    RELEASE_JSON.write_text(json.dumps(release, indent=2) + "\n")
    return release


if __name__ == "__main__":
    print(json.dumps(prepare(may_download=True)))
