"""The host firewall's rules (issue 22): each port open only to the hosts that need it, in a table of our own
that nftables itself accepts."""

import re
import shutil
import subprocess

import pytest

from matrix_deploy.services import roles
from matrix_deploy.services.firewall import service as firewall
from tests.conftest import make_settings

SPLIT = {"db": ["db"], "mas": ["mas"], "synapse": ["syn"], "proxy": ["px"]}
SCALE = {"db": ["a"], "mas": ["a", "b"], "synapse": ["a", "b"], "proxy": ["a"]}
NAMES = {"db.internal": ["10.0.0.1"], "prom.internal": ["10.9.0.1", "fd00::9"]}


def resolve(name):
    return NAMES.get(name, [name])


def split(**data):
    addresses = {"db": "db.internal", "mas": "10.0.0.2", "syn": "10.0.0.3", "px": "fd00::4"}
    return make_settings(hosts={h: {"internal_address": a} for h, a in addresses.items()}, groups=SPLIT, **data)


def rules(s, here):
    return firewall.rules(s, here, roles.doors(s, here), resolve)


def accepted(s, here) -> dict[str, set[str]]:
    """port(s) -> who may come (`anyone` or source addresses), from the rendered rules."""
    found = {}
    for rule in rules(s, here):
        m = re.fullmatch(r"(?:ip6? saddr (\S+|\{ [^}]+ \}) )?tcp dport (\S+|\{ [^}]+ \}) accept comment .*", rule)
        assert m, rule
        sources = set(m.group(1).strip("{} ").split(", ")) if m.group(1) else {"anyone"}
        found.setdefault(m.group(2), set()).update(sources)
    return found


def test_one_host_opens_only_ssh_and_the_proxy():
    s = make_settings()
    assert accepted(s, "hs1") == {"22": {"anyone"}, "{ 80, 443 }": {"anyone"}}


def test_split_each_internal_port_only_for_the_hosts_that_need_it():
    s = split()
    assert accepted(s, "db") == {"22": {"anyone"}, "5432": {"10.0.0.2", "10.0.0.3"}}
    assert accepted(s, "mas") == {"22": {"anyone"}, "8080": {"fd00::4", "10.0.0.3"}}
    assert accepted(s, "syn") == {"22": {"anyone"}, "8008": {"fd00::4", "10.0.0.2"}}
    assert accepted(s, "px") == {"22": {"anyone"}, "{ 80, 443 }": {"anyone"}}
    # An IPv6 client gets an ip6 rule, an IPv4 one an ip rule; a name is resolved as the host resolves it.
    assert "ip6 saddr fd00::4 tcp dport 8080 accept" in " ".join(rules(s, "mas"))
    assert any(r.startswith("ip saddr 10.0.0.2 tcp dport 8008") for r in rules(s, "syn"))


def test_metrics_only_for_the_scrapers_named():
    assert "9100" not in str(accepted(split(), "syn"))
    s = split(firewall_metrics_scrapers=["prom.internal", "10.8.0.0/24"])
    assert accepted(s, "syn")["9100"] == {"10.9.0.1", "10.8.0.0/24", "fd00::9"}
    assert accepted(s, "mas")["9300"] == {"10.9.0.1", "10.8.0.0/24", "fd00::9"}
    assert "9100" not in accepted(s, "db")


def test_workers_redis_and_replication_between_synapse_hosts():
    hosts = {"a": {"internal_address": "10.0.0.1", "synapse_workers": {"generic": 1, "event_persister": 1}},
             "b": {"internal_address": "10.0.0.2", "synapse_workers": {"generic": 2}}}  # fmt: skip
    s = make_settings(hosts=hosts, groups=SCALE, firewall_metrics_scrapers=["10.9.0.1"])
    a, b = accepted(s, "a"), accepted(s, "b")
    assert a["6379"] == {"10.0.0.2"} and "6379" not in b  # Redis beside the main process
    assert a["8008"] == {"10.0.0.2"}  # the main process: MAS and the workers on b
    assert a["{ 8100, 8101 }"] == {"10.0.0.2"} and b["{ 8100, 8101 }"] == {"10.0.0.1"}
    assert a["{ 9100, 9101, 9102 }"] == {"10.9.0.1"} and b["{ 9101, 9102 }"] == {"10.9.0.1"}
    assert b["8080"] == {"10.0.0.1"}  # the second MAS instance, for the proxy and Synapse on a
    assert "5432" in a and "5432" not in b


def test_operator_ports_and_ssh_port():
    s = split(firewall_open_ports=[8443, 2000], firewall_ssh_port=2222)
    assert accepted(s, "db")["2222"] == {"anyone"} and accepted(s, "db")["{ 8443, 2000 }"] == {"anyone"}
    assert "22" not in accepted(s, "db")


def test_each_host_keeps_the_ssh_port_the_inventory_reaches_it_on():
    ports = {"db": {"ssh_port": 2201}, "mas": {"ssh_port": 2202}, "syn": {}, "px": {"ssh_port": 22}}
    hosts = {h: {"internal_address": f"10.0.0.{i}", **port} for i, (h, port) in enumerate(ports.items(), 1)}
    s = make_settings(hosts=hosts, groups=SPLIT)
    ssh = [next(d.ports for d in firewall.doors(s, h) if d.what == "SSH") for h in hosts]
    assert ssh == [(2201,), (2202,), (22,), (22,)]
    assert accepted(s, "db")["2201"] == {"anyone"} and "22" not in accepted(s, "db")


def test_only_our_own_table_and_replaced_in_one_transaction():
    text = firewall.render_rules(split(), "db", roles.doors(split(), "db"), resolve)
    assert "flush" not in text
    assert set(re.findall(r"^\s*(?:table|delete table) (\S+ \S+)", text, re.M)) == {"inet matrix_deploy"}
    head = [line for line in text.splitlines() if line and not line.startswith("#")][:3]
    assert head == ["table inet matrix_deploy", "delete table inet matrix_deploy", "table inet matrix_deploy {"]
    assert "policy drop;" in text and 'iif "lo" accept' in text and "ct state established,related accept" in text


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
@pytest.mark.parametrize("here", ["db", "mas", "syn", "px"])
def test_nftables_accepts_the_rules(here, tmp_path):
    """`nft -c` in a network namespace of its own: checked by nftables, nothing of this machine's touched."""
    s = split(firewall_metrics_scrapers=["prom.internal"], firewall_open_ports=[8443])
    path = tmp_path / "rules.nft"
    path.write_text(firewall.render_rules(s, here, roles.doors(s, here), resolve))
    out = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_scraper_the_host_cannot_resolve_is_named():
    from pyinfra.api.exceptions import DeployError

    def strict(name):
        if name not in NAMES and not name[0].isdigit():
            raise DeployError(f"the internal address {name!r} does not resolve on this host")
        return resolve(name)

    s = split(firewall_metrics_scrapers=["prom.nowhere"])
    with pytest.raises(DeployError, match="'prom.nowhere' of firewall_metrics_scrapers does not resolve on this host"):
        firewall.rules(s, "syn", roles.doors(s, "syn"), strict)
