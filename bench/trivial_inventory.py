"""The first lab host, for bench/trivial.py."""

from matrix_deploy.lab import read_hosts

_host = read_hosts()[0]
bench = [(_host.address, {"ssh_user": _host.ssh_user, "ssh_key": _host.ssh_key,
                          "ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "off"})]  # fmt: skip
