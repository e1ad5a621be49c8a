"""Looking at lab hosts from this machine: commands over SSH as root, HTTPS through the lab's proxy, what a
pyinfra run changed and when services last started. Used by the lab's tests and by `make bench`."""

import http.client
import json
import re
import ssl
import subprocess

from matrix_deploy.lab import LAB_DIR, LabHost

LAB_SETTINGS = LAB_DIR / "settings.json"  # per-run setting overrides read by inventories/lab.py


PUBLIC_HOST = "matrix.lab.test"


# The PostgreSQL unit is whatever cluster the host runs (postgres_unit()); the others are named by the deploy.
OWN_UNITS = {"mas": "mas", "synapse": "synapse", "nginx": "nginx"}


def ssh_argv(host: LabHost, command: str) -> list[str]:
    """The ssh command line that runs `command` as root on the lab host."""
    return ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"{host.ssh_user}@{host.address}", command]  # fmt: skip


def ssh(host: LabHost, command: str, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `command` as root on the lab host; `input` goes to its stdin (how secrets travel: never in argv)."""
    return subprocess.run(ssh_argv(host, command), capture_output=True, text=True, timeout=timeout, input=input)


def sh(host: LabHost, command: str, input: str | None = None, timeout: int = 300) -> str:
    """`ssh`, asserting that the command succeeded: a failing check never reads as "found nothing"."""
    result = ssh(host, command, input=input, timeout=timeout)
    assert result.returncode == 0, (
        f"on {host.name}: {command[:200]!r} exited {result.returncode}: {result.stderr[-2000:]}"
    )
    return result.stdout


def postgres_unit(host: LabHost) -> str:
    """The PostgreSQL cluster unit the host runs (postgresql@15-main on Debian 12, @17 on 13): asked, not assumed."""
    units = sh(host, "systemctl list-units --all --plain --no-legend 'postgresql@*' | awk '{print $1}'").split()
    units = [u.removesuffix(".service") for u in units if re.fullmatch(r"postgresql@\d+-main(\.service)?", u)]
    assert len(units) == 1, f"expected one PostgreSQL cluster unit on {host.name}, found {units}"
    return units[0]


def services(host: LabHost) -> dict[str, str]:
    return {"postgres": postgres_unit(host), **OWN_UNITS}


def fetch(host: LabHost, method: str, path: str, body=None, token=None, vhost=PUBLIC_HOST):
    """One HTTPS request to the lab's nginx for `vhost`; returns (status, decoded JSON or text)."""
    conn = http.client.HTTPSConnection(host.address, 443, timeout=30, context=ssl._create_unverified_context())
    headers = {"Host": vhost, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw


def changed_operations(pyinfra_stdout: str) -> list[str]:
    """Operations the results table reports as changed (Success) on at least one host."""
    assert "Grand total" in pyinfra_stdout, "no results table: " + pyinfra_stdout[-2000:]
    rows = re.findall(r"^\s+(.+?)\s+\d+\s+(\d+|-)\s+(?:\d+|-)\s+(?:\d+|-)\s*$", pyinfra_stdout, re.M)
    return [name for name, success in rows if success != "-" and name != "Grand total"]


def service_stamps(host: LabHost) -> dict[str, str]:
    """When each service last (re)started; nginx reloads show as new worker PIDs."""
    stamps = {}
    for name, unit in services(host).items():
        stamps[name] = ssh(host, f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout.strip()
    workers = ssh(host, "pgrep -P $(systemctl show -p MainPID --value nginx) | sort").stdout.split()
    stamps["nginx"] += " workers " + ",".join(workers)
    return stamps
