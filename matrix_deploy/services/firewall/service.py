"""The host firewall: an nftables table of our own (inet matrix_deploy) made from the services' doors.

Applied so that the run can never shut itself out: the rules are checked (`nft -c`), a transient systemd timer
is armed that puts the previous table back in ROLLBACK_AFTER seconds, the rules are applied in one
transaction, and only when a fresh SSH connection from the operator's machine still gets through is the timer
cancelled and the file that boot loads replaced. Otherwise the run fails, and the timer rolls back by itself.
"""

import ipaddress

from pyinfra import logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.operations import python

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.firewall import Door
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import unit

RULES = "/etc/matrix-deploy/firewall.nft"  # what boot loads (UNIT): only ever rules a fresh SSH connection got through
CANDIDATE = f"{RULES}.candidate"
RESTORE = f"{STATE}/firewall-rollback.nft"  # the table as it was before the rules being tried
UNIT = "matrix-deploy-firewall"
ROLLBACK = "matrix-deploy-firewall-rollback"  # the transient timer (and service) that restores RESTORE
ROLLBACK_AFTER = 60  # seconds: the fresh SSH connection must have got through by then
FRESH_SSH_TIMEOUT = 15
TABLE = "inet matrix_deploy"

NEEDS = host_state.Needs(
    paths={"/etc/matrix-deploy": 1, f"/etc/systemd/system/{UNIT}.service": 0},
    packages=("nftables",),
    units=(UNIT,),
)


def doors(s, here: str) -> list[Door]:
    """SSH (the inventory's port for this host) and the operator's own open ports, for anyone, on every host."""
    found = [Door("SSH", (s.placement.ssh_port(here, s.firewall_ssh_port),))]
    if s.firewall_open_ports:
        found.append(Door("firewall_open_ports", tuple(s.firewall_open_ports)))
    return found


def names(s) -> list[str]:
    """The scrapers given by name: resolved on each host (the snapshot), as internal addresses are."""
    found = []
    for scraper in s.firewall_metrics_scrapers if s.firewall else ():
        try:
            ipaddress.ip_network(scraper, strict=False)
        except ValueError:
            found.append(scraper)
    return found


def _networks(names, resolve) -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 addresses (or networks) of `names`, as this host resolves them."""
    found = set()
    for name in names:
        try:
            found.add(ipaddress.ip_network(name, strict=False))
            continue
        except ValueError:
            pass
        found.update(ipaddress.ip_network(a) for a in resolve(name))
    v4 = sorted(n for n in found if n.version == 4)
    v6 = sorted(n for n in found if n.version == 6)
    show = lambda n: str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)  # noqa: E731
    return [show(n) for n in v4], [show(n) for n in v6]


def _scraper_lookup(resolve):
    """`resolve`, with a message naming firewall_metrics_scrapers for a scraper's name the host cannot resolve."""

    def look_up(name):
        try:
            return resolve(name)
        except DeployError:
            raise DeployError(
                f"{name!r} of firewall_metrics_scrapers does not resolve on this host; expected a name it resolves "
                "(DNS or /etc/hosts), or an IP address or network"
            ) from None

    return look_up


def _set(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _comment(text: str) -> str:
    # nft keeps at most 128 bytes of a comment; no quotes inside.
    return 'comment "' + text.replace('"', "'")[:120] + '"'


def rules(s, here: str, doors: list[Door], resolve) -> list[str]:
    """The input chain's rules of host `here` for `doors`; `resolve(name)` gives a name's addresses as `here` does."""
    p, found = s.placement, []
    for door in doors:
        dport = f"tcp dport {_set(door.ports)}"
        if door.clients is None and not door.scrapers:
            found.append(f"{dport} accept {_comment(f'{door.what} from anyone')}")
            continue
        names = s.firewall_metrics_scrapers if door.scrapers else [p.addresses[c] for c in door.clients]
        look_up = _scraper_lookup(resolve) if door.scrapers else resolve
        label = "the metrics scrapers" if door.scrapers else ", ".join(door.clients)
        v4, v6 = _networks(names, look_up)
        for family, addresses in (("ip", v4), ("ip6", v6)):
            if addresses:
                found.append(f"{family} saddr {_set(addresses)} {dport} accept {_comment(f'{door.what} from {label}')}")
    return found


def render_rules(s, here: str, doors: list[Door], resolve) -> str:
    return render("firewall/matrix-deploy.nft.j2", rules=rules(s, here, doors, resolve))


APPLY = f"""
set -e
if ! out=$(nft -c -f {CANDIDATE} 2>&1); then
    echo "firewall: nftables refused the new rules in {CANDIDATE}; nothing was applied:" >&2
    echo "$out" >&2
    exit 1
fi
systemctl stop {ROLLBACK}.timer 2>/dev/null || true
systemctl reset-failed {ROLLBACK}.timer {ROLLBACK}.service 2>/dev/null || true
# The table as it is now (none: the lines alone create and delete it), itself checked before anything changes.
{{ echo 'table {TABLE}'; echo 'delete table {TABLE}'; nft list table {TABLE} 2>/dev/null || true; }} > {RESTORE}.partial
nft -c -f {RESTORE}.partial
mv {RESTORE}.partial {RESTORE}
systemd-run --quiet --unit={ROLLBACK} --on-active={ROLLBACK_AFTER} --timer-property=AccuracySec=1s \\
    /usr/sbin/nft -f {RESTORE}
nft -f {CANDIDATE}
"""
KEEP = f"""
set -e
if ! systemctl is-active --quiet {ROLLBACK}.timer; then
    echo "firewall: the rollback ran before the new rules were confirmed: the previous rules are back" >&2
    exit 1
fi
systemctl stop {ROLLBACK}.timer
install -o root -g root -m 644 {CANDIDATE} {RULES}
rm -f {CANDIDATE} {RESTORE}
systemctl enable --quiet {UNIT}
systemctl start {UNIT}
"""
REMOVE = f"""
systemctl disable --now --quiet {UNIT} 2>/dev/null || true
nft delete table {TABLE} 2>/dev/null || true
rm -f {RULES} {CANDIDATE} /etc/systemd/system/{UNIT}.service
systemctl daemon-reload
"""


def fresh_ssh(state, host) -> bool:
    """A new SSH connection, made as the run's own was (the inventory's address, port, user, key): the new
    rules let the operator in. pyinfra's status: False fails the host, and the armed timer rolls back."""
    if not issubclass(host.connector_cls, SSHConnector):
        return True  # @local, @docker...: no SSH connection to cut
    connector = host.connector_cls(state, host)
    try:
        connector.connect()
        _, out, _ = connector.client.exec_command("true", timeout=FRESH_SSH_TIMEOUT)
        status = out.channel.recv_exit_status()
        if status != 0:
            raise OSError(f"`true` exited {status}")
        return True
    except Exception as error:  # noqa: BLE001 (a connector raises many kinds: each means the same here)
        host.log_styled(
            f"firewall: a fresh SSH connection did not get through the new rules ({error}); they are rolled back by "
            f"themselves within {ROLLBACK_AFTER} s (timer {ROLLBACK} on the host), the previous rules kept. Check "
            "firewall_ssh_port and the inventory's SSH address and port.",
            fg="red",
            log_func=logger.error,
        )
        return False
    finally:
        if connector.client is not None:
            connector.client.close()


@deploy("Firewall")
def install(d, here: str, doors: list[Door]):
    s, state = d.settings, host_state.current()
    if not s.firewall:
        # Ours only: the table, its file and unit (a host that had the firewall before).
        if state.exists(RULES) or state.exists(f"/etc/systemd/system/{UNIT}.service"):
            remote.shell(name="No matrix-deploy firewall (firewall = false)", commands=[REMOVE])
        return
    content = render_rules(s, here, doors, state.resolve)
    unit_file = unit("Firewall", f"{UNIT}.service", "firewall/matrix-deploy-firewall.service.j2", rules=RULES)
    if unit_file is not None:
        remote.shell(name="systemd reads the firewall's unit", commands=["systemctl daemon-reload"],
                     _if=unit_file.did_change)  # fmt: skip
    host_state.directory("matrix-deploy's configuration directory", "/etc/matrix-deploy", "root", "root", "755")
    if state.is_file(RULES, content, "root", "root", "644"):
        host_state.absent("No firewall rules left from a try that was rolled back", CANDIDATE)
        if not state.unit_running(UNIT):
            remote.shell(name="The firewall is loaded at boot", commands=[f"systemctl enable --now --quiet {UNIT}"])
        return
    host_state.put("Firewall rules to try", CANDIDATE, content, "root", "root", "644")
    remote.shell(name="Check the firewall rules and apply them, a rollback armed", commands=[APPLY])
    python.call(name="A fresh SSH connection gets through the new firewall", function=fresh_ssh)
    remote.shell(name="Keep the firewall rules (rollback cancelled)", commands=[KEEP])
