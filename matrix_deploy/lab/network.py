"""The lab network: one bridge with a private subnet, masqueraded to reach the package mirrors.

Every change to the kernel is recorded in the state directory so `down` can undo it, even after
a crash or from a fresh clone.
"""

import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .system import LAB_INDEX, STATE_DIR, LabError, run

BRIDGE = f"mdlab{LAB_INDEX}"
NFT_TABLE = "matrix_deploy_lab" + (f"_{LAB_INDEX}" if LAB_INDEX else "")
SUBNET = f"10.99.{LAB_INDEX}"  # /24; .1 is this machine, lab hosts start at .11
GATEWAY = f"{SUBNET}.1"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Shared by every lab on this machine: the first one up saves the value, the last one down restores it.
SAVED_SYSCTL = STATE_DIR / "ip_forward.orig"

NFT_RULES = f"""
table inet {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET}.0/24 oifname != "{BRIDGE}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{BRIDGE}" accept
        oifname "{BRIDGE}" ct state established,related accept
    }}
}}
"""


def host_address(index: int) -> str:
    if not 0 <= index < 200:
        raise LabError(f"the lab subnet {SUBNET}.0/24 holds at most 200 hosts")
    return f"{SUBNET}.{11 + index}"


def _nft_table_exists() -> bool:
    # Without nft (a bare machine before the lab installed its tools) the lab never made a table.
    return (
        bool(shutil.which("nft"))
        and run(["nft", "list", "table", "inet", NFT_TABLE], check=False, quiet=True).returncode == 0
    )


def _link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False, quiet=True).returncode == 0


def _route_owner() -> str | None:
    out = run(["ip", "-4", "route", "show", f"{SUBNET}.0/24"], check=False, quiet=True).stdout
    return out.strip() or None


@contextmanager
def _forwarding_lock():
    """Labs coming up and going down at once take turns here: the saved forwarding value, and which bridges are
    up, are read and changed by one lab at a time (two labs going down both found it saved, one then failed)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "ip_forward.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up() -> None:
    with _forwarding_lock():
        _up()


def _up() -> None:
    if not _link_exists(BRIDGE):
        other = _route_owner()
        if other:
            raise LabError(f"the lab subnet {SUBNET}.0/24 is already routed on this machine ({other}); free it first")
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    run(["nft", "delete", "table", "inet", NFT_TABLE], check=False, quiet=True)
    run(["nft", "-f", "-"], input=NFT_RULES)
    if not SAVED_SYSCTL.exists():
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        SAVED_SYSCTL.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")


def down() -> list[str]:
    """Undo everything `up` did; returns what was removed."""
    with _forwarding_lock():
        return _down()


def _down() -> list[str]:
    removed = []
    if _link_exists(BRIDGE):
        run(["ip", "link", "delete", BRIDGE])
        removed.append(f"bridge {BRIDGE}")
    if _nft_table_exists():
        run(["nft", "delete", "table", "inet", NFT_TABLE])
        removed.append(f"nft table inet {NFT_TABLE}")
    if SAVED_SYSCTL.exists() and not _other_labs():
        IP_FORWARD.write_text(SAVED_SYSCTL.read_text())
        SAVED_SYSCTL.unlink()
        removed.append("net.ipv4.ip_forward restored")
    return removed


def _other_labs() -> list[str]:
    """Bridges of other labs still up on this machine (they need forwarding kept on)."""
    links = json.loads(run(["ip", "-j", "link", "show", "type", "bridge"], quiet=True).stdout)
    return [link["ifname"] for link in links if link["ifname"].startswith("mdlab") and link["ifname"] != BRIDGE]


def veths(machines=()) -> list[str]:
    """The host side of this lab's veths: every link on the lab's bridge, and those of the containers `machines`
    (their machine names) wherever they are: vb-NAME (--network-bridge) or ve-NAME (--network-veth), found also
    under the altname systemd-nspawn gives a name too long for the kernel (it shortens it with a hash)."""
    wanted = {prefix + machine for machine in machines for prefix in ("vb-", "ve-")}
    return [
        link["ifname"]
        for link in json.loads(run(["ip", "-j", "link", "show"], quiet=True).stdout)
        # This lab's only: another lab's hosts have veths too, on their own bridge and with their own names.
        if (link.get("master") == BRIDGE and link["ifname"] != BRIDGE)
        or wanted & {link["ifname"], *link.get("altnames", [])}
    ]


def remove_veths(machines=()) -> list[str]:
    """Delete veths() (once their containers are gone) and wait until the kernel has; returns what was removed."""
    found = veths(machines)
    for name in found:
        # The kernel may be removing it already (its container's network namespace ended): then it is not found.
        run(["ip", "link", "delete", name], check=False, quiet=True)
    deadline = time.monotonic() + 30
    while veths(machines):
        if time.monotonic() > deadline:
            raise LabError(f"the lab's veths {', '.join(veths(machines))} are still there: ip link delete them")
        time.sleep(0.1)
    return [f"veth {name}" for name in found]


def leftovers(machines=()) -> dict:
    """Kernel state of the lab that is still present (empty when the machine is clean); `machines`: the machine
    names of the lab's hosts, whose veths count even off the bridge."""
    return {
        "bridge": _link_exists(BRIDGE),
        "nft_table": _nft_table_exists(),
        "veths": veths(machines),
        "saved_sysctl": SAVED_SYSCTL.exists() and not _other_labs(),
    }
