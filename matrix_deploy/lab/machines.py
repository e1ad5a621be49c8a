"""Lab hosts: fresh copies of the base image, booted with systemd-nspawn on the lab bridge."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import image, network
from .system import LAB_INDEX, STATE_DIR, LabError

MACHINES_DIR = STATE_DIR / ("machines" + (f"-{LAB_INDEX}" if LAB_INDEX else ""))
BOOT_TIMEOUT = 90


def _network_file(address: str) -> str:
    dns = [
        line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines() if line.startswith("nameserver")
    ]
    lines = ["[Match]", "Name=host0", "", "[Network]", f"Address={address}/24", f"Gateway={network.GATEWAY}"]
    lines += [f"DNS={d}" for d in dns]
    return "\n".join(lines) + "\n"


def prepare(name: str, address: str, peers: dict[str, str], public_key: str, img: Path) -> Path:
    """Unpack a fresh rootfs for `name` and give it its identity, address and the lab's SSH key."""
    root = MACHINES_DIR / name
    image.extract(img, root)
    (root / "etc/hostname").write_text(f"{name}\n")
    # Like a server installed with a static address: its own name maps to that address, not 127.0.1.1.
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{addr} {peer}" for peer, addr in peers.items()]
    (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    (root / "etc/systemd/network/10-lab.network").write_text(_network_file(address))
    # root, and the sudo user (image.SUDO_USER) that production-like inventories log in as.
    for home, owner in (("root", 0), (f"home/{image.SUDO_USER}", _uid(root, image.SUDO_USER))):
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(public_key)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, owner, owner)
    return root


def _uid(root: Path, user: str) -> int:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise LabError(f"the lab image has no user {user}; rebuild it (delete {image.CACHE_DIR})")


def machine_name(name: str) -> str:
    """The container's name for systemd-nspawn, which also names its veth (vb-<name>): unique per lab index."""
    return name if not LAB_INDEX else f"{name}-{LAB_INDEX}"


def boot(name: str, root: Path, release: str) -> int:
    log = open(MACHINES_DIR / f"{name}.log", "wb")
    env = dict(os.environ)
    if release != "12":
        # This machine mounts cgroups in hybrid mode; trixie's systemd 257 shuts down at once on a v1 hierarchy.
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    proc = subprocess.Popen(
        [
            "systemd-nspawn",
            "--boot",
            "-D",
            str(root),
            f"--machine={machine_name(name)}",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            f"--network-bridge={network.BRIDGE}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    return proc.pid


def wait_for_ssh(name: str, address: str, pid: int) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = (MACHINES_DIR / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            raise LabError(f"lab host {name} stopped while booting:\n" + "\n".join(tail))
        try:
            with socket.create_connection((address, 22), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            time.sleep(0.2)
    raise LabError(
        f"lab host {name} ({address}) did not answer SSH within {BOOT_TIMEOUT}s; see {MACHINES_DIR / name}.log"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def running() -> dict[int, str]:
    """PIDs of systemd-nspawn processes booted from the lab's machine directory, with their names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if args and args[0].endswith("systemd-nspawn") and "-D" in args:
            root = args[args.index("-D") + 1]
            if Path(root).parent == MACHINES_DIR:
                found[int(entry.name)] = Path(root).name
    return found


def foreign_with_name(name: str) -> int | None:
    """PID of a container called `name` that this lab did not start, if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = _cmdline(int(entry.name))
            if (
                args
                and args[0].endswith("systemd-nspawn")
                and f"--machine={machine_name(name)}" in args
                and "-D" in args
            ):
                # Another lab's host of the same name (another checkout, MATRIX_DEPLOY_LAB_INDEX) is no conflict.
                if Path(args[args.index("-D") + 1]).parent.parent != STATE_DIR:
                    return int(entry.name)
    return None


def stop_all() -> list[str]:
    """Power off every lab container (SIGTERM, then SIGKILL) and delete their disks."""
    stopped = []
    pids = running()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid, name in pids.items():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        stopped.append(f"container {name} (pid {pid})")
    if MACHINES_DIR.exists():
        shutil.rmtree(MACHINES_DIR)
        stopped.append(f"disks under {MACHINES_DIR}")
    return stopped
