"""What the lab's inventories hold: whatever `make lab-up` booted (.lab/hosts.json), deployed with the
lab's settings, one inventory per site (homeserver) of the lab: inventories/lab.py, inventories/lab_peer.py.

`make lab` records the MAS release it chose (MAS_RELEASE, a download, or the tests' stand-in: see release.py)
in .lab/mas-release.json, which is fed to the product's normal local-file install path below.
"""

import json

from . import HOST_DATA, LAB_DIR, SITES, acme, network, read_hosts


def groups(site: str, inventory: str) -> dict[str, list]:
    """The role groups (db, mas, synapse, proxy) of the lab's hosts of `site`, with the lab's settings, and
    old_synapse: the roleless host the settings adopt a Synapse from, if any."""
    every = read_hosts()
    hosts = [h for h in every if h.site == site]
    if not hosts:
        raise SystemExit(
            f"{inventory}: no lab host of {site} is up; run `make lab-up`"
            + ("" if site == next(iter(SITES)) else " with LAYOUT=pair")
        )
    release_file = LAB_DIR / "mas-release.json"
    if not release_file.exists():
        raise SystemExit(f"{inventory}: no lab MAS release; run `make lab` (it builds one into .lab/)")
    release = json.loads(release_file.read_text())
    settings = {
        "matrix_server_name": site,
        "matrix_public_url": f"https://matrix.{site}/",
        "mas_public_url": f"https://auth.{site}/",
        "mas_release_file": release["file"],
        "mas_release_sha256": release["sha256"],
        "admin_user": "admin",
        "secrets_dir": str(LAB_DIR / "secrets"),
        # Certificates from the lab's own ACME server (pebble on this machine), as a real proxy gets them.
        "tls": "acme",
        "acme_directory_url": acme.DIRECTORY,
        "acme_directory_ca": str(LAB_DIR / "acme-directory-ca.pem"),
    }
    if len({h.site for h in every}) > 1:
        # Homeservers that federate in private: they trust the lab's ACME root for federation (instead of the
        # system's CAs), may reach each other's private addresses (Synapse blocks private ranges by default),
        # and fetch each other's keys directly (no matrix.org notary here).
        settings["synapse_federation_ca_certificates"] = [str(LAB_DIR / "acme-root.pem")]
        settings["synapse_extra_config"] = {
            "ip_range_whitelist": [f"{network.SUBNET}.0/24"],
            "trusted_key_servers": [],
        }
    settings_file = LAB_DIR / "settings.json"  # per-run overrides the tests write (for every host)
    overrides = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    ssh = {"ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "off"}

    # Hosts named by name, as in most inventories: other hosts reach each one by that name (internal_address
    # defaults to it), resolved on the hosts through their /etc/hosts; SSH goes to the address. The login is
    # an operator's: the sudo user with `_sudo` (the lab's default), or root.
    def entry(h):
        login = {"ssh_hostname": h.address, "ssh_user": h.deploy_user, "_sudo": h.deploy_user != "root",
                 "ssh_key": h.ssh_key}  # fmt: skip
        return h.name, {**login, **ssh, **settings, **HOST_DATA.get(h.name, {}), **overrides}

    found = {role: [entry(h) for h in hosts if role in h.roles] for role in ("db", "mas", "synapse", "proxy")}
    # A host with no role joins the inventory only as the old Synapse's host of an adoption (adopt_synapse).
    adopted = (overrides.get("adopt_synapse") or {}).get("host")
    found["old_synapse"] = [entry(h) for h in hosts if not h.roles and h.name == adopted]
    return found
