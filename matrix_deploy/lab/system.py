"""What the lab needs from this machine: root, its tools, disk space, and a way to run commands."""

import fcntl
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR = Path(os.environ.get("MATRIX_DEPLOY_CACHE", "/var/cache/matrix-deploy"))
# Several labs can run side by side (one per checkout): each index has its own bridge, subnet and disks.
LAB_INDEX = int(os.environ.get("MATRIX_DEPLOY_LAB_INDEX", "0"))
if not 0 <= LAB_INDEX <= 9:
    raise SystemExit(f"MATRIX_DEPLOY_LAB_INDEX={LAB_INDEX}: expected a number from 0 to 9")
STATE_DIR = Path(os.environ.get("MATRIX_DEPLOY_LAB_STATE", "/var/lib/matrix-deploy-lab"))
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "pebble": "pebble",
}
HOST_TOOLS_EXTRA = {"zstd": "zstd", "ssh": "openssh-client", "ip": "iproute2"}
# A lab host's rootfs is about 220 MB before the deploy and about 900 MB after it.
MIN_FREE_BYTES = 2 * 1024**3


class LabError(Exception):
    """A problem the operator can fix; the message says how."""


def run(cmd: list[str], quiet: bool = False, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise LabError(f"command failed ({result.returncode}): {' '.join(cmd)}\n" + "\n".join(output))
    if not quiet and result.stdout.strip():
        print(result.stdout.strip())
    return result


@contextmanager
def machine_lock():
    """Held while a lab installs host packages or builds an image: labs side by side take turns (apt's own
    lock would make the second fail, and two builds of one image would waste minutes)."""
    with open("/run/lock/matrix-deploy-lab.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab boots containers and changes networking: run it as root (sudo make lab-up)")


def ensure_host_tools() -> None:
    """Install the lab's host dependencies with apt when any is missing."""
    missing = sorted({pkg for tool, pkg in {**HOST_TOOLS, **HOST_TOOLS_EXTRA}.items() if not shutil.which(tool)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise LabError(f"missing {', '.join(missing)} and no apt-get to install them: install them by hand")
    print(f"lab: installing host packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], quiet=True, env=env)
    run(["apt-get", "install", "-y", "-q", *missing], quiet=True, env=env)


def require_disk(path: Path, hosts: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    needed = MIN_FREE_BYTES * max(hosts, 1)
    if free < needed:
        raise LabError(
            f"not enough disk under {path}: {free // 1024**2} MB free, the lab needs "
            f"{needed // 1024**2} MB for {hosts} host(s); free some space or set MATRIX_DEPLOY_LAB_STATE"
        )


def side_by_side(commands: list[tuple[str, list[str], dict | None]], cwd=None) -> list[int]:
    """Run each (prefix, argv, env) at once, every output line printed with its prefix; their exit statuses."""
    running = []
    for prefix, argv, env in commands:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        thread = threading.Thread(
            target=lambda p=proc, x=prefix: [print(x + line, end="", flush=True) for line in p.stdout]
        )
        thread.start()
        running.append((proc, thread))
    codes = []
    for proc, thread in running:
        codes.append(proc.wait())
        thread.join()
    return codes
