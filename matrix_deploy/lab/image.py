"""The lab's Debian base images (12 bookworm, 13 trixie): built once with debootstrap, cached as zstd tarballs.

The cache key is a hash of this file and of the host's CA certificates, so the image is
rebuilt exactly when its recipe changes.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

from .system import CACHE_DIR, LabError, run

SUITES = {"12": "bookworm", "13": "trixie"}
DEFAULT_RELEASE = "13"
# The user production-like lab inventories log in as (sudo without a password, like a cloud image's).
SUDO_USER = "deploy"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "ca-certificates",
    "iproute2",
    "curl",
]
# Units that cannot work inside a container and would leave systemd "degraded".
MASKED_UNITS = ["systemd-remount-fs.service", "getty@tty1.service"]
APT_SOURCES = """\
Types: deb
URIs: {mirror}
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


def _recipe_hash() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for cert in sorted(HOST_CA_DIR.glob("*.crt")):
        digest.update(cert.name.encode() + cert.read_bytes())
    return digest.hexdigest()[:16]


def suite(release: str) -> str:
    if release not in SUITES:
        raise LabError(f"Debian {release}: the lab boots Debian {' or '.join(SUITES)}")
    return SUITES[release]


def image_path(release: str) -> Path:
    return CACHE_DIR / f"debian-{suite(release)}-{_recipe_hash()}.tar.zst"


def _customize(root: Path, release: str) -> None:
    """Make the bare debootstrap tree a bootable, reachable lab host."""
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    for cert in HOST_CA_DIR.glob("*.crt"):
        shutil.copy(cert, root / "usr/local/share/ca-certificates" / cert.name)
    run(["chroot", str(root), "update-ca-certificates"], quiet=True)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(APT_SOURCES.format(mirror=MIRROR, suite=suite(release)))
    # The package mirror may serve snapshot indexes older than their Valid-Until.
    (root / "etc/apt/apt.conf.d/99lab").write_text('Acquire::Check-Valid-Until "false";\n')
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd", "ssh"], quiet=True)
    run(["chroot", str(root), "systemctl", "mask", *MASKED_UNITS], quiet=True)
    run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", SUDO_USER], quiet=True)
    sudoers = root / f"etc/sudoers.d/{SUDO_USER}"
    sudoers.write_text(f"{SUDO_USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/machine-id").write_text("")
    run(["chroot", str(root), "apt-get", "clean"], quiet=True)
    for leftover in (root / "var/lib/apt/lists").glob("*_*"):
        leftover.unlink()


def ensure_image(release: str, log=print) -> Path:
    """Return the cached image of Debian `release`, building it first if its recipe changed."""
    target = image_path(release)
    if target.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"lab: building the Debian {release} ({suite(release)}) image (about two minutes, once) -> {target}")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="build-") as tmp:
        root = Path(tmp) / "root"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite(release),
                str(root),
                MIRROR,
            ],
            quiet=True,
        )
        _customize(root, release)
        partial = Path(tmp) / "image.tar.zst"
        run(["tar", "-C", str(root), "--numeric-owner", "-I", "zstd -T0 -3", "-cf", str(partial), "."])
        partial.rename(target)
    for old in CACHE_DIR.glob(f"debian-{suite(release)}-*.tar.zst"):
        if old != target:
            old.unlink()
    return target


def extract(image: Path, dest: Path) -> None:
    if dest.exists():
        raise LabError(f"{dest} already exists; run `make lab-down` first")
    dest.mkdir(parents=True)
    run(["tar", "-C", str(dest), "--numeric-owner", "-I", "zstd", "-xf", str(image)])
