"""Lab hosts: throwaway Debian 12 or 13 machines on this box (systemd-nspawn), one command away.

`up()` boots the hosts of a layout and records them in `.lab/hosts.json`, which
`inventories/lab.py` reads; `down()` removes everything `up()` created, including what a
crashed run left behind.
"""

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import acme, image, machines, network
from .system import LAB_INDEX, STATE_DIR, LabError, ensure_host_tools, machine_lock, require_disk, require_root

__all__ = ["LAYOUTS", "SITES", "LabError", "LabHost", "down", "up", "leftovers"]

ROLES = ("db", "mas", "synapse", "proxy")
PROJECT_DIR = Path(__file__).resolve().parents[2]
LAB_DIR = PROJECT_DIR / (".lab" + (f"-{LAB_INDEX}" if LAB_INDEX else ""))  # one per lab index
HOSTS_FILE = LAB_DIR / "hosts.json"
SSH_KEY = LAB_DIR / "id_ed25519"
LAYOUTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "single": [("lab1", ROLES)],
    "split": [("lab-db", ("db",)), ("lab-mas", ("mas",)), ("lab-synapse", ("synapse",)), ("lab-proxy", ("proxy",))],
    # Two homeservers that federate: each host is a whole deployment of its own site (SITES).
    "pair": [("lab1", ROLES), ("peer1", ROLES)],
    # Past one machine: two Synapse hosts (the main process and workers, workers only) and two MAS instances.
    "scale": [("scale1", ROLES), ("scale2", ("mas", "synapse"))],
}
# What a layout's hosts get beside the lab's settings (matrix_deploy/lab/inventories.py). The workers are spread
# so that the first host alone still serves clients: the event persister beside the main process.
HOST_DATA: dict[str, dict] = {
    "scale1": {"synapse_workers": {"generic": 1, "event_persister": 1}},
    "scale2": {"synapse_workers": {"generic": 1, "federation_sender": 1}},
}
# The homeservers (server names) of the lab, each deployed by its own inventory; a layout's hosts belong to
# the first, except the pair's second host. Their public names are the defaults: matrix.<site>, auth.<site>.
SITES = {"lab.test": "inventories/lab.py", "peer.test": "inventories/lab_peer.py"}
PAIR_PEER = "peer1"


def site_of(layout: str, name: str) -> str:
    return "peer.test" if layout == "pair" and name == PAIR_PEER else "lab.test"


def public_names(site: str) -> list[str]:
    """The names a site's proxy serves, which every lab host (and the lab's ACME DNS) resolves to it."""
    return [site, f"matrix.{site}", f"auth.{site}"]


LOGINS = ("sudo", "root")


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    ssh_user: str  # root: what the tests use to look at the host
    ssh_key: str
    roles: tuple[str, ...]
    release: str = image.DEFAULT_RELEASE
    deploy_user: str = "root"  # who the deploy logs in as: root, or image.SUDO_USER with sudo
    site: str = "lab.test"  # the homeserver (server name) this host is part of


def _ensure_ssh_key() -> str:
    if not SSH_KEY.exists():
        LAB_DIR.mkdir(exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "matrix-deploy-lab", "-f", str(SSH_KEY)],
            check=True,
        )
    return SSH_KEY.with_suffix(".pub").read_text()


# Where a lab host keeps the lab's ACME root among its system CAs (Debian's update-ca-certificates reads *.crt here).
ACME_ROOT_ON_HOSTS = "/usr/local/share/ca-certificates/matrix-deploy-lab-acme-root.crt"


def _trust_acme_root(host: LabHost) -> None:
    """The lab's ACME root in the host's system trust store, as the world trusts Let's Encrypt's: MAS's outgoing
    HTTPS (its doctor fetching the well-known document) verifies the lab's certificates as it would a public CA's."""
    result = subprocess.run(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.address}",
         f"cat > {ACME_ROOT_ON_HOSTS} && update-ca-certificates >/dev/null"],
        input=(LAB_DIR / "acme-root.pem").read_text(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        raise LabError(f"lab host {host.name}: could not add the lab's ACME root to its CAs: {result.stderr.strip()}")


def read_hosts() -> list[LabHost]:
    if not HOSTS_FILE.exists():
        return []
    return [LabHost(**{**h, "roles": tuple(h["roles"])}) for h in json.loads(HOSTS_FILE.read_text())["hosts"]]


def _check_layout(spec: list[tuple[str, tuple[str, ...]]]) -> None:
    names = [name for name, _ in spec]
    if len(set(names)) != len(names):
        raise LabError(f"lab host names must be unique, got {names}")
    for name, roles in spec:
        if not name.replace("-", "").isalnum() or len(name) > 11:
            raise LabError(f"lab host name {name!r}: use letters, digits and '-', at most 11 characters")
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise LabError(f"lab host {name}: unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
        pid = machines.foreign_with_name(name)
        if pid:
            raise LabError(
                f"a container named {name} is already running (pid {pid}) and is not this lab's: stop it first"
            )


def up(
    layout: str = "single",
    spec: list[tuple[str, tuple[str, ...]]] | None = None,
    release: str = image.DEFAULT_RELEASE,
    login: str = "sudo",
    log=print,
    unified: bool = False,
) -> list[LabHost]:
    """Boot the hosts of `layout` (or of an explicit name/roles `spec`) on Debian `release`, deployed to
    as root or through the sudo user (`login`); harmless when already up. `unified`: cgroup v2 on Debian 12 too,
    for a host that is to be upgraded in place to 13 (machines.boot)."""
    require_root()
    image.suite(release)
    if login not in LOGINS:
        raise LabError(f"lab login {login!r}: choose one of {', '.join(LOGINS)}")
    deploy_user = image.SUDO_USER if login == "sudo" else "root"
    if spec is None:
        if layout not in LAYOUTS:
            raise LabError(f"unknown lab layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        spec = LAYOUTS[layout]
    _check_layout(spec)
    current = read_hosts()
    wanted = [(n, tuple(r), release, deploy_user) for n, r in spec]
    if [(h.name, h.roles, h.release, h.deploy_user) for h in current] == wanted and len(machines.running()) == len(
        spec
    ):
        log(f"lab: already up ({', '.join(h.name for h in current)})")
        return current
    # The tools first: on a bare machine even `down` needs them. One lab at a time installs or builds.
    with machine_lock():
        ensure_host_tools()
        img = image.ensure_image(release, log)
    # Also what an earlier lab of these names left behind (an orphaned container, its veth), even unrecorded.
    down(log=lambda *_: None, names=[name for name, _ in spec])
    require_disk(STATE_DIR, len(spec))
    public_key = _ensure_ssh_key()
    started = time.monotonic()
    network.up()
    addresses = {name: network.host_address(i) for i, (name, _) in enumerate(spec)}
    hosts = [
        LabHost(name, addresses[name], "root", str(SSH_KEY), tuple(roles), release, deploy_user, site_of(layout, name))
        for name, roles in spec
    ]
    # Like DNS: each site's public names lead to its proxy, on every lab host and for the ACME server.
    public = {n: h.address for h in hosts if "proxy" in h.roles for n in public_names(h.site)}
    try:
        booted = []
        for host in hosts:
            root = machines.prepare(host.name, host.address, {**addresses, **public}, public_key, img)
            booted.append((host, machines.boot(host.name, root, release, unified)))
        for host, pid in booted:
            machines.wait_for_ssh(host.name, host.address, pid)
        proxy = next((h for h in hosts if "proxy" in h.roles), None)
        if proxy:
            LAB_DIR.mkdir(exist_ok=True)
            acme.up(proxy.address, LAB_DIR, public)
            for host in hosts:
                _trust_acme_root(host)
    except BaseException:
        down(log=lambda *_: None)
        raise
    LAB_DIR.mkdir(exist_ok=True)
    HOSTS_FILE.write_text(json.dumps({"layout": layout, "hosts": [asdict(h) for h in hosts]}, indent=2) + "\n")
    log(
        f"lab: {len(hosts)} Debian {release} host(s) up in {time.monotonic() - started:.1f}s, deploying as {deploy_user}: "
        + ", ".join(f"{h.name} {h.address}" for h in hosts)
    )
    return hosts


def down(log=print, names=()) -> None:
    """Stop every lab host and undo every change the lab made to this machine; harmless when nothing is up.
    `names`: lab hosts whose leftovers (veths) to look for beside those the lab knows of."""
    require_root()
    removed = acme.down() + machines.stop_all([*names, *(h.name for h in read_hosts())]) + network.down()
    HOSTS_FILE.unlink(missing_ok=True)
    log("lab: down" + (f" (removed {', '.join(removed)})" if removed else " (nothing was up)"))


def leftovers() -> dict:
    """What the lab still holds on this machine: all empty/false once `down()` has run."""
    processes = machines.processes()
    names = {*processes.values(), *(h.name for h in read_hosts())}
    if machines.MACHINES_DIR.exists():
        names |= {p.name for p in machines.MACHINES_DIR.iterdir() if p.is_dir()}
    return {
        **network.leftovers([machines.machine_name(n) for n in sorted(names)]),
        "containers": sorted(set(processes.values())),  # also one whose systemd-nspawn is gone
        "disks": sorted(p.name for p in machines.MACHINES_DIR.iterdir()) if machines.MACHINES_DIR.exists() else [],
        "hosts_file": HOSTS_FILE.exists(),
        "acme_server": acme.WORK.exists(),
    }
