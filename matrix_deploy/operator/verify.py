"""`matrix-deploy verify INVENTORY`: a deployed homeserver, checked from outside as clients and servers see it.

Every check goes through the public proxy over HTTPS, the way a client or another homeserver would:
TLS (chain, names, days left), the well-known documents, client versions, MAS answering the compat
login, OAuth discovery through auth_metadata, federation (server keys and version through the
delegated name), internal paths closed, and, when the secrets store holds the admin's password, a
real login and whoami (the session is logged out again). With the firewall on, each host's doors too,
straight to the host (its inventory address): the public ports answer, every internal port is closed.
Last, MAS's own `mas-cli doctor` on each MAS host (over SSH, as the inventory logs in): each of its
findings a check of its own, warnings and errors failing, any secret in them masked.
One line per check; exit 0 when all pass.

With scheduled backups (`backup_repository`), the age of the last good backup on each host with data is read
over SSH (as the inventory reaches the host, through sudo for a sudo user): older than a day and a bit, or none
recorded, fails.

Names resolve as usual (DNS); `--connect ADDRESS` sends every request to that address instead
(a staging proxy before DNS points at it, or a lab host), still with each name in TLS and Host.
"""

import argparse
import datetime
import http.client
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from matrix_deploy.operator.inventory import Deployment, build
from matrix_deploy.operator.settings import SettingsError
from matrix_deploy.services import roles
from matrix_deploy.services.backup.paths import STAMP
from matrix_deploy.services.backup.service import data_roles
from matrix_deploy.services.mas.paths import MAS_CONFIG, MAS_CURRENT, MAS_USER

# A certificate that expires sooner than this fails: renewal should have happened long before.
MIN_DAYS_LEFT = 14
# How long a port may take to answer: a firewall drops what it refuses, so "closed" is mostly this long a wait.
PORT_TIMEOUT = 3
# A daily backup older than this failed at least once (or its timer does not run).
MAX_BACKUP_AGE_HOURS = 26


def backup_age(d: Deployment, name: str) -> str:
    """How long ago the last good backup of host `name` ended (its stamp); AssertionError when too long or never."""
    try:
        done = subprocess.run(ssh_command(d, name, f"cat {STAMP}"), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} did not answer over SSH within 60 s") from None
    assert done.returncode == 0 and done.stdout.strip().isdigit(), (
        f"no good backup recorded ({STAMP}: {done.stderr.strip() or done.stdout.strip() or 'absent'})"
    )
    hours = (time.time() - int(done.stdout)) / 3600
    assert hours <= MAX_BACKUP_AGE_HOURS, (
        f"the last good backup is {hours:.1f} h old (expected at most {MAX_BACKUP_AGE_HOURS} h: a daily backup "
        "failed or did not run, see journalctl -u matrix-deploy-backup)"
    )
    return f"the last good backup is {hours:.1f} h old"


@dataclass
class Result:
    name: str
    ok: bool
    detail: str


class Client:
    def __init__(self, connect: str | None, ca_file: str | None):
        self.connect = connect
        self.context = ssl.create_default_context(cafile=ca_file)

    def _address(self, host: str) -> str:
        return self.connect or host

    def certificate(self, host: str, port: int = 443) -> dict:
        """The verified peer certificate of `host` (raises ssl.SSLError when the chain or the name is wrong)."""
        with socket.create_connection((self._address(host), port), timeout=15) as raw:
            with self.context.wrap_socket(raw, server_hostname=host) as tls:
                return tls.getpeercert()

    def request(self, method: str, host: str, path: str, body=None, token=None, port: int = 443):
        """One HTTPS request to `host` (verified TLS, SNI and Host naming it); returns (status, JSON or text)."""
        conn = http.client.HTTPConnection(host, port, timeout=20)
        conn.sock = self.context.wrap_socket(
            socket.create_connection((self._address(host), port), timeout=20), server_hostname=host
        )
        headers = {"Host": host if port == 443 else f"{host}:{port}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = conn.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


def answers(address: str, port: int) -> bool:
    """A TCP connection to `address`:`port` from here is accepted (refused or no answer: closed)."""
    try:
        socket.create_connection((address, port), timeout=PORT_TIMEOUT).close()
        return True
    except OSError:
        return False


def doors(d: Deployment, name: str) -> tuple[dict[int, str], dict[int, str]]:
    """Host `name`'s public ports (for anyone) and internal ones (for some hosts or the scrapers): port -> what."""
    public, internal = {}, {}
    for door in roles.doors(d.settings, name):
        if door.what == "firewall_open_ports":
            continue  # the operator's own: nothing we deploy need listen there
        for port in door.ports:
            (public if door.clients is None and not door.scrapers else internal)[port] = door.what
    return public, internal


def firewall_check(d: Deployment, name: str):
    """From here (no host of the deployment, no scraper): the public ports answer, the internal ones do not."""

    def check():
        address = d.connect.get(name, name)
        public, internal = doors(d, name)
        ports = [*public, *internal]
        with ThreadPoolExecutor(max_workers=16) as pool:
            found = dict(zip(ports, pool.map(lambda port: answers(address, port), ports), strict=True))
        shut = [f"{p} ({public[p]})" for p in public if not found[p]]
        open_ = [f"{p} ({internal[p]})" for p in internal if found[p]]
        assert not open_, f"internal port open to this machine at {address}: {', '.join(open_)}; expected closed"
        assert not shut, f"public port not answering at {address}: {', '.join(shut)}"
        return f"{address}: {', '.join(map(str, public))} answer; {', '.join(map(str, internal)) or 'no port'} closed"

    return check


# doctor.rs logs each finding as one tracing event, maybe on more lines, in mas_context's format
# (crates/context/src/fmt.rs): `<time> LEVEL <target>:<line> <emoji> message`.
DOCTOR_EVENT = re.compile(r"^\S+\s+(INFO|WARN|ERROR)\s+\S+\s(.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARKS = "✅⚠❌💡\ufe0f"


def doctor_findings(output: str, secrets=()) -> list[tuple[str, str]]:
    """(level, message) of each finding in `mas-cli doctor`'s output, every secret value masked (doctor prints
    `matrix.secret` when Synapse's MAS API refuses it); its opening "Running diagnostics" left out."""
    found = []
    for line in ANSI.sub("", output).splitlines():
        m = DOCTOR_EVENT.match(line)
        if m:
            found.append([m.group(1), m.group(2).strip(MARKS + " ")])
        elif found and line.strip():
            found[-1][1] += " | " + line.strip()
    masked = sorted((v.strip() for v in secrets if len(v.strip()) >= 8), key=len, reverse=True)
    result = []
    for level, message in found:
        for value in masked:
            message = message.replace(value, "<secret>")
        if not message.startswith("Running diagnostics"):
            result.append((level, message))
    return result


def ssh_command(d: Deployment, name: str, command: str) -> list[str]:
    """ssh to host `name` as the inventory logs in (address, port, user, key, known hosts, sudo), running `command`."""
    login = d.logins.get(name, {})
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
    if login.get("ssh_port"):
        argv += ["-p", str(login["ssh_port"])]
    if login.get("ssh_key"):
        argv += ["-i", str(login["ssh_key"])]
    if login.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={login['ssh_known_hosts_file']}"]
    if login.get("ssh_strict_host_key_checking"):
        argv += ["-o", f"StrictHostKeyChecking={login['ssh_strict_host_key_checking']}"]
    address = d.connect.get(name, name)
    target = f"{login['ssh_user']}@{address}" if login.get("ssh_user") else address
    return [*argv, target, f"sudo -n sh -c {shlex.quote(command)}" if login.get("_sudo") else command]


def doctor(d: Deployment) -> list[Result]:
    """`mas-cli doctor` on each MAS host, as MAS's user from its release: each finding a result."""
    results = []
    command = f"cd {MAS_CURRENT} && runuser -u {MAS_USER} -- ./mas-cli doctor --config {MAS_CONFIG}"
    secrets = list(d.secrets.values.values())
    for name in d.settings.placement.mas:
        label = f"MAS doctor on {name}"
        try:
            out = subprocess.run(ssh_command(d, name, command), capture_output=True, text=True, timeout=120,
                                 stdin=subprocess.DEVNULL)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            results.append(Result(label, False, f"could not run it: {error}"))
            continue
        findings = doctor_findings(out.stdout + out.stderr, secrets)
        if out.returncode != 0 or not findings:
            tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
            masked = doctor_findings("x ERROR x: " + tail[0], secrets)[0][1]
            results.append(Result(label, False, f"exit status {out.returncode}: {masked}"))
            continue
        for level, message in findings:
            short = message.split(" | ")[0]
            results.append(Result(f"{label}: {short[:70]}", level == "INFO", message[:400]))
    return results


def _days_left(cert: dict) -> int:
    expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), datetime.UTC)
    return (expires - datetime.datetime.now(datetime.UTC)).days


def checks(d: Deployment, client: Client):
    """Yield (name, function) pairs; each function returns a detail string or raises AssertionError."""
    s = d.settings
    public, mas_host, server_name = s.public_host, s.mas_public_host, s.matrix_server_name

    def tls(host):
        def check():
            cert = client.certificate(host)
            days = _days_left(cert)
            issuer = dict(x[0] for x in cert["issuer"]).get("organizationName") or dict(
                x[0] for x in cert["issuer"]
            ).get("commonName")
            assert days >= MIN_DAYS_LEFT, f"expires in {days} days (expected at least {MIN_DAYS_LEFT})"
            return f"valid for {host}, issued by {issuer}, {days} days left"

        return check

    def well_known_client():
        status, body = client.request("GET", server_name, "/.well-known/matrix/client")
        assert status == 200, f"HTTP {status}"
        assert body["m.homeserver"]["base_url"] == s.matrix_public_url, body
        return f"m.homeserver {body['m.homeserver']['base_url']}"

    delegated = {}

    def well_known_server():
        status, body = client.request("GET", server_name, "/.well-known/matrix/server")
        assert status == 200, f"HTTP {status}"
        delegated["to"] = body["m.server"]
        return f"m.server {body['m.server']}"

    def versions():
        status, body = client.request("GET", public, "/_matrix/client/versions")
        assert status == 200 and body.get("versions"), f"HTTP {status}: {body}"
        return f"{len(body['versions'])} versions, newest {body['versions'][-1]}"

    def compat_login():
        status, body = client.request("GET", public, "/_matrix/client/v3/login")
        # With MAS delegation Synapse has no login endpoint (404): a list of flows means MAS answered.
        assert status == 200 and isinstance(body, dict) and body.get("flows"), f"HTTP {status}: {body}"
        return "flows " + ", ".join(f["type"] for f in body["flows"])

    def auth_metadata():
        status, body = client.request("GET", public, "/_matrix/client/v1/auth_metadata")
        assert status == 200 and isinstance(body, dict), f"HTTP {status}: {body}"
        assert body.get("issuer") == s.mas_public_url, f"issuer {body.get('issuer')!r}, expected {s.mas_public_url!r}"
        for key in ("authorization_endpoint", "token_endpoint"):
            assert str(body.get(key, "")).startswith(s.mas_public_url), f"{key} {body.get(key)!r}"
        internal = [v for v in _strings(body) if not v.startswith(("https://", "urn:")) and "://" in v]
        assert not internal, f"non-public URLs in it: {internal}"
        return f"issuer {body['issuer']}"

    def federation_keys():
        host, _, port = delegated.get("to", f"{server_name}:8448").partition(":")
        status, body = client.request("GET", host, "/_matrix/key/v2/server", port=int(port or 8448))
        assert status == 200 and body.get("server_name") == server_name, f"HTTP {status}: {body}"
        assert body.get("verify_keys"), body
        return f"{', '.join(body['verify_keys'])} at {host}:{port or 8448}"

    def federation_version():
        host, _, port = delegated.get("to", f"{server_name}:8448").partition(":")
        status, body = client.request("GET", host, "/_matrix/federation/v1/version", port=int(port or 8448))
        assert status == 200, f"HTTP {status}: {body}"
        return f"{body['server']['name']} {body['server']['version']}"

    def internal_closed():
        closed = [
            (public, "/_synapse/admin/v1/server_version"),
            (public, "/_synapse/mas/is_localpart_available?localpart=x"),
            (public, "/health"),
            (mas_host, "/health"),
        ]
        open_ = [f"https://{h}{p} ({st})" for h, p in closed if (st := client.request("GET", h, p)[0]) != 404]
        assert not open_, "reachable: " + ", ".join(open_)
        return f"{len(closed)} internal paths answer 404"

    def admin_login():
        password = d.secrets.values.get("admin_password")
        if not s.admin_user or not password:
            return None
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": s.admin_user},
                "password": password}  # fmt: skip
        status, session = client.request("POST", public, "/_matrix/client/v3/login", body)
        assert status == 200, f"login HTTP {status}: {session}"
        try:
            status, me = client.request(
                "GET", public, "/_matrix/client/v3/account/whoami", token=session["access_token"]
            )
            assert status == 200 and me["user_id"] == session["user_id"], f"whoami HTTP {status}: {me}"
        finally:
            client.request("POST", public, "/_matrix/client/v3/logout", {}, token=session["access_token"])
        return f"logged in as {me['user_id']}, whoami agrees"

    for host in dict.fromkeys([public, mas_host, server_name]):
        yield f"TLS {host}", tls(host)
    yield "well-known client", well_known_client
    yield "well-known server", well_known_server
    yield "client versions", versions
    yield "compat login answered by MAS", compat_login
    yield "OAuth discovery (auth_metadata)", auth_metadata
    yield "federation server keys", federation_keys
    yield "federation version", federation_version
    yield "internal paths closed", internal_closed
    yield "admin login and whoami", admin_login
    if s.firewall:
        for name in d.connect:
            if s.placement.roles_of(name):  # not the old Synapse's host of an adoption across hosts
                yield f"firewall {name}", firewall_check(d, name)
    if s.backups:
        for name in s.placement.addresses:
            if data_roles(d, name):
                yield f"backup age {name}", lambda name=name: backup_age(d, name)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def run(d: Deployment, client: Client) -> list[Result]:
    results = []
    for name, check in checks(d, client):
        try:
            detail = check()
            if detail is None:
                continue
            results.append(Result(name, True, detail))
        except (AssertionError, OSError, ssl.SSLError, http.client.HTTPException, KeyError, TypeError) as error:
            results.append(Result(name, False, f"{type(error).__name__}: {error}" if str(error) else repr(error)))
    return results + doctor(d)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="matrix-deploy verify", description=__doc__.splitlines()[0])
    parser.add_argument("inventory")
    parser.add_argument("--connect", help="send every request to this address (the proxy) instead of resolving names")
    parser.add_argument("--ca-file", help="trust this CA (PEM) instead of the system's (a staging or lab CA)")
    args = parser.parse_args(argv)
    try:
        d = build(args.inventory)
    except SettingsError as error:
        print(f"matrix-deploy verify: {args.inventory}: the settings have problems:\n{error}", file=sys.stderr)
        return 2
    results = run(d, Client(args.connect, args.ca_file))
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}")
    failed = [r.name for r in results if not r.ok]
    print(
        f"\n{len(results) - len(failed)} of {len(results)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
