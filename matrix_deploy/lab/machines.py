"""Lab hosts: fresh copies of the base image, booted with systemd-nspawn on the lab bridge."""

import os
import re
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
STOP_TIMEOUT = 15  # for a clean poweroff, before the lab kills the container
KILL_TIMEOUT = 60  # for SIGKILLed processes to be gone (a process in the kernel, state D, can take a while)
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")


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


def boot(name: str, root: Path, release: str, unified: bool = False) -> int:
    """Start the container; `unified`: the cgroup v2 hierarchy on Debian 12 too (a host upgraded in place to 13
    runs trixie's systemd, which needs it, from the moment apt re-executes it)."""
    log = open(MACHINES_DIR / f"{name}.log", "ab")
    env = dict(os.environ)
    if release != "12" or unified:
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


def restart(name: str, address: str, release: str) -> int:
    """Power the container off cleanly (SIGTERM to its nspawn) and boot its disk again, as `release`: a reboot."""
    pids = [pid for pid, n in running().items() if n == name]
    if len(pids) != 1:
        raise LabError(f"lab host {name}: expected one running container, found {pids}")
    os.kill(pids[0], signal.SIGTERM)
    if not _wait_until(lambda: not _alive(pids[0]), STOP_TIMEOUT * 4):
        raise LabError(f"lab host {name} did not power off within {STOP_TIMEOUT * 4}s")
    _reap(pids)
    pid = boot(name, MACHINES_DIR / name, release)
    wait_for_ssh(name, address, pid)
    return pid


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
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # ended since
        return False
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


def _unescape(field: str) -> str:
    """A path as /proc/*/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _disks_on_their_filesystem() -> tuple[str, str]:
    """MACHINES_DIR as /proc/*/mountinfo names a container's root: its filesystem's device and its path there."""
    path = str(MACHINES_DIR.resolve())
    best = ("", "", "")  # mount point, device, root of the mount
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        root, point = _unescape(fields[3]), _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):  # the deepest mount holding it; the last of equals is on top
            best = (point, fields[2], root)
    point, device, root = best
    return device, root.rstrip("/") + "/" + path[len(point) :].lstrip("/")


def _disk_of(pid: int, device: str, disks: str) -> str | None:
    """The lab host whose disk is the root ("/") of process `pid`, also when that disk is deleted (".../name//deleted")."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:  # gone, or a zombie
        return None
    for line in lines:
        fields = line.split()
        if _unescape(fields[4]) == "/" and fields[2] == device:
            root = _unescape(fields[3])
            if root.startswith(disks.rstrip("/") + "/"):
                return root[len(disks.rstrip("/")) + 1 :].split("/")[0] or None
    return None


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes() -> dict[int, str]:
    """Every process of this lab's hosts, with the host's name: the systemd-nspawn processes (running()), every
    process whose root is one of the lab's disks (deleted or not: an orphaned container whose nspawn is gone), and
    everything else in those containers' PID namespaces. Never a process of another lab (another MACHINES_DIR)."""
    found = running()
    device, disks = _disks_on_their_filesystem()
    own_namespace = _pid_namespace("self")
    namespaces: dict[str, str] = {}
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    for pid in pids:
        name = _disk_of(pid, device, disks)
        if name and _alive(pid):
            found[pid] = name
            namespace = _pid_namespace(pid)
            if namespace and namespace != own_namespace:  # a chroot on this machine's namespace would be all of it
                namespaces[namespace] = name
    for pid in pids:
        if pid not in found and _pid_namespace(pid) in namespaces and _alive(pid):
            found[pid] = namespaces[_pid_namespace(pid)]
    return found


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_until(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _reap(pids) -> None:
    """Collect the exit status of the containers this process started (a zombie otherwise)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_all(names=()) -> list[str]:
    """Power off every container of this lab and delete their disks; harmless when none is up.

    SIGTERM to each systemd-nspawn asks for a clean poweroff (STOP_TIMEOUT). A container that does not finish
    in time, or whose nspawn is already gone (an orphaned init), has all its processes SIGKILLed; then its
    nspawn if it still waits. Only once every process of the lab is gone do its veths (vb-<machine>, also those
    of `names`) go, then its disks.
    """
    stopped = []
    nspawns = running()
    for pid in nspawns:
        os.kill(pid, signal.SIGTERM)
    _wait_until(lambda: not any(_alive(pid) for pid in nspawns), STOP_TIMEOUT)
    _reap(nspawns)
    stopped += [f"container {name} (pid {pid})" for pid, name in nspawns.items()]
    left = processes()
    if left:
        # The containers first: nspawn, seeing its container end, cleans up after it and exits on its own.
        _kill(pid for pid in left if pid not in running())
        _wait_until(lambda: set(processes()) <= set(running()), KILL_TIMEOUT)
        _wait_until(lambda: not running(), 5)

        def killed() -> bool:  # whatever is still there, found anew each time (a PID read earlier may be reused)
            still = processes()
            _kill(still)
            return not still

        if not _wait_until(killed, KILL_TIMEOUT):
            raise LabError(f"lab processes still there after SIGKILL: {processes()}; see ps -o pid,stat,wchan,cmd")
        _reap(left)
        for name in sorted(set(left.values())):
            count = sum(1 for n in left.values() if n == name)
            stopped.append(f"container {name} killed ({count} processes)")
    names = {*names, *nspawns.values(), *left.values()}
    if MACHINES_DIR.exists():
        names |= {path.name for path in MACHINES_DIR.iterdir() if path.is_dir()}
    stopped += network.remove_veths([machine_name(name) for name in sorted(names)])
    for name in sorted(names):
        # What a SIGKILLed nspawn leaves (it removes this when it ends on its own); a fresh one would reuse it.
        propagate = NSPAWN_PROPAGATE / machine_name(name)
        if propagate.is_dir() and not any(propagate.iterdir()):
            propagate.rmdir()
    if MACHINES_DIR.exists():
        shutil.rmtree(MACHINES_DIR)
        stopped.append(f"disks under {MACHINES_DIR}")
    return stopped
