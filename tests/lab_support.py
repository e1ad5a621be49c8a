"""Helpers for tests that run against lab hosts: ssh, pyinfra runs, HTTPS through the proxy."""

import http.client
import json
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path

from matrix_deploy.lab import LAB_DIR, LabHost

ROOT = Path(__file__).resolve().parents[1]
LAB_SETTINGS = LAB_DIR / "settings.json"  # per-run setting overrides read by inventories/lab.py
PUBLIC_HOST = "matrix.lab.test"
SERVICES = {"postgres": "postgresql@*-main", "mas": "mas", "synapse": "synapse", "nginx": "nginx"}


def unit_of(host: LabHost, unit: str) -> str:
    """The unit a SERVICES pattern names on `host` (PostgreSQL's follows the Debian release)."""
    if "*" not in unit:
        return unit
    return ssh(host, f"systemctl list-units --all --plain --no-legend '{unit}' | cut -d' ' -f1").stdout.split()[0]


def ssh(host: LabHost, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"{host.ssh_user}@{host.address}", command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def pyinfra(*args: str, inventory: str = "inventories/lab.py") -> subprocess.CompletedProcess:
    """Run the deploy; pyinfra writes its progress and results to stderr, merged here into .stdout."""
    return subprocess.run(
        [str(ROOT / ".venv/bin/pyinfra"), "-y", *args, inventory, "deploy.py"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200, stdin=subprocess.DEVNULL,
    )  # fmt: skip


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
    for name, unit in SERVICES.items():
        unit = unit_of(host, unit)
        stamps[name] = ssh(host, f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout.strip()
    workers = ssh(host, "pgrep -P $(systemctl show -p MainPID --value nginx) | sort").stdout.split()
    stamps["nginx"] += " workers " + ",".join(workers)
    return stamps


class CommandLines:
    """Every process command line seen on the lab host and on this machine while the block runs.

    Sampled as fast as the machines allow (a host loop over /proc/*/cmdline, a thread here), so a
    secret on any command line that lives for more than a few milliseconds is caught.
    """

    SAMPLER = (
        "touch /root/sampling; nohup nice -n 19 sh -c 'while [ -e /root/sampling ]; do cat /proc/[0-9]*/cmdline"
        ' 2>/dev/null | tr "\\000" "\\n"; done | awk "!seen[\\$0]++" > /root/cmdlines\' >/dev/null 2>&1 &'
    )

    def __init__(self, host: LabHost):
        self.host, self.seen, self._running = host, set(), False

    def _sample_here(self):
        while self._running:
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.update(path.read_bytes().split(b"\0"))
                except OSError:
                    pass
            time.sleep(0.005)

    def __enter__(self):
        assert ssh(self.host, self.SAMPLER).returncode == 0
        self._running = True
        self._thread = threading.Thread(target=self._sample_here, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        ssh(self.host, "rm -f /root/sampling; sleep 1")
        host_lines = ssh(self.host, "cat /root/cmdlines; rm -f /root/cmdlines").stdout.splitlines()
        self.lines = host_lines + [b.decode(errors="replace") for b in self.seen]
        assert any("pyinfra" in line for line in self.lines) and any("mas-cli" in line for line in host_lines)
