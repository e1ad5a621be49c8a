"""The lab: whatever `make lab-up` booted (.lab/hosts.json), deployed with the lab's settings.

The lab cannot download the real MAS release here, so `make lab` builds the tests' stand-in
release into .lab/ and records its file and sha256 in .lab/mas-release.json, which is fed to the
product's normal local-file install path below.
"""

import json
from pathlib import Path

from matrix_deploy.inventory import check
from matrix_deploy.lab import LAB_DIR, acme, read_hosts

_hosts = read_hosts()
if not _hosts:
    raise SystemExit("inventories/lab.py: no lab is up; run `make lab-up` first")
_release_file = LAB_DIR / "mas-release.json"
if not _release_file.exists():
    raise SystemExit("inventories/lab.py: no lab MAS release; run `make lab` (it builds one into .lab/)")
_release = json.loads(_release_file.read_text())

_settings = {
    "matrix_server_name": "lab.test",
    "matrix_public_url": "https://matrix.lab.test/",
    "mas_public_url": "https://auth.lab.test/",
    "mas_release_file": _release["file"],
    "mas_release_sha256": _release["sha256"],
    "admin_user": "admin",
    "secrets_dir": str(LAB_DIR / "secrets"),
    # Certificates from the lab's own ACME server (pebble on this machine), as a real proxy gets them.
    "tls": "acme",
    "acme_directory_url": acme.DIRECTORY,
    "acme_directory_ca": str(LAB_DIR / "acme-directory-ca.pem"),
    **json.loads(Path(LAB_DIR / "settings.json").read_text() if (LAB_DIR / "settings.json").exists() else "{}"),
}
_ssh = {"ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "off"}


def _login(h):
    """As an operator would: the sudo user with `_sudo` (the lab's default), or root."""
    return {"ssh_user": h.deploy_user, "_sudo": h.deploy_user != "root"}


def _group(role):
    # Hosts named by name, as in most inventories: other hosts reach each one by that name (internal_address
    # defaults to it), resolved on the hosts through their /etc/hosts; SSH goes to the address.
    return [
        (h.name, {"ssh_hostname": h.address, **_login(h), "ssh_key": h.ssh_key, **_ssh, **_settings})
        for h in _hosts
        if role in h.roles
    ]


db, mas, synapse, proxy = _group("db"), _group("mas"), _group("synapse"), _group("proxy")

check(__file__)
