"""The lab: whatever `make lab-up` booted, as recorded in .lab/hosts.json."""

from matrix_deploy.lab import read_hosts

_hosts = read_hosts()
if not _hosts:
    raise SystemExit("inventories/lab.py: no lab is up; run `make lab-up` first")

_ssh = {"ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "off"}
_by_role = {
    role: [
        (h.address, {"ssh_user": h.ssh_user, "ssh_key": h.ssh_key, "lab_name": h.name, **_ssh})
        for h in _hosts
        if role in h.roles
    ]
    for role in ("db", "mas", "synapse", "proxy")
}
db, mas, synapse, proxy = (_by_role[r] for r in ("db", "mas", "synapse", "proxy"))
