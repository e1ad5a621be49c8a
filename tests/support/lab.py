"""Helpers for tests that run against lab hosts: ssh, pyinfra runs, HTTPS through the proxy."""

import base64
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from matrix_deploy.lab import LAB_DIR, LabHost
from matrix_deploy.lab.probe import (  # noqa: F401  (the tests' helpers, with these)
    LAB_SETTINGS,
    OWN_UNITS,
    PUBLIC_HOST,
    changed_operations,
    fetch,
    postgres_unit,
    service_stamps,
    services,
    sh,
    ssh,
    ssh_argv,
)

ROOT = Path(__file__).resolve().parents[2]
LAB_SECRETS = LAB_DIR / "secrets"  # the lab inventory's secrets store


def answers_here(address: str, ports) -> dict[int, str]:
    """From this machine to each of `ports` at once: open, refused (a reset: nothing listens) or dropped (no answer
    within 3 s: a firewall)."""

    def one(port):
        try:
            socket.create_connection((address, port), timeout=3).close()
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(ports, pool.map(one, ports), strict=True))


def answers_from(client: LabHost, server: str, ports) -> dict[int, str]:
    """From lab host `client` to `server` (a name its /etc/hosts knows, or an address), each of `ports` at once,
    as answers_here."""
    tries = " ".join(f"(timeout 3 bash -c '</dev/tcp/{server}/{port}' 2>/dev/null; echo {port} $?) &" for port in ports)
    codes = dict(line.split() for line in sh(client, f"{tries} wait").splitlines() if line.strip())
    return {port: {"0": "open", "124": "dropped"}.get(codes[str(port)], "refused") for port in ports}


def root_file(host: LabHost, path: str, content: str) -> None:
    """A file only root can read, written through stdin (its content is on no command line)."""
    sh(host, f"umask 077 && cat > {path}", input=content)


def lab_settings(host: LabHost, **settings) -> None:
    """Write the lab inventory's setting overrides (`host`: the lab host they are for)."""
    LAB_SETTINGS.write_text(json.dumps(settings))


def fresh_secrets() -> None:
    """Forget the lab's secrets store, so the next deploy generates every secret anew."""
    shutil.rmtree(LAB_SECRETS, ignore_errors=True)


def deploy_command(*args: str, inventory: str = "inventories/lab.py") -> list[str]:
    return [str(ROOT / ".venv/bin/pyinfra"), "-y", *args, inventory, "deploy.py"]


def pyinfra(*args: str, inventory: str = "inventories/lab.py") -> subprocess.CompletedProcess:
    """Run the deploy; pyinfra writes its progress and results to stderr, merged here into .stdout."""
    return subprocess.run(
        deploy_command(*args, inventory=inventory),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200, stdin=subprocess.DEVNULL,
    )  # fmt: skip


class Running:
    """A deploy started in the background, its output collected as it comes; `result()` waits for its end."""

    def __init__(self, *args: str, inventory: str = "inventories/lab.py"):
        self.process = subprocess.Popen(
            deploy_command(*args, inventory=inventory),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self._lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, timeout: int = 900) -> subprocess.CompletedProcess:
        self.process.wait(timeout=timeout)
        self._reader.join()
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, "".join(self._lines))


def killed_during(run: Running, host: LabHost, killer: str) -> tuple[subprocess.CompletedProcess, str]:
    """The deploy `run`'s result, and the output of `killer` (a shell loop on `host` that kills something once it
    sees its moment): stopped if the run ended without it (the moment never came), so a failure shows at once."""
    loop = subprocess.Popen(ssh_argv(host, killer), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = run.result(timeout=1800)
    try:
        said, _ = loop.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        loop.kill()
        said, _ = loop.communicate()
    return result, said


# MAS's default rate_limiting.login.per_ip (crates/config/src/sections/rate_limiting.rs): a burst of 3 password
# checks per client address, then one every 20 s. Every lab test logs in from this machine's one address.
LOGIN_REFILL_SECONDS = 20


def compat_login(host: LabHost, body: dict, vhost=PUBLIC_HOST, patience: float = 3 * LOGIN_REFILL_SECONDS):
    """A password login through nginx to MAS's compatibility layer, as a well-behaved client makes it: a JSON
    body, and when MAS limits the rate (429 M_LIMIT_EXCEEDED, sent without a retry time) it waits and asks again;
    a refused attempt costs nothing. Returns fetch()'s (status, body) of the last answer."""
    deadline = time.monotonic() + patience
    while True:
        status, answer = fetch(host, "POST", "/_matrix/client/v3/login", body, vhost=vhost)
        limited = status == 429 and isinstance(answer, dict) and answer.get("errcode") == "M_LIMIT_EXCEEDED"
        if not limited or time.monotonic() > deadline:
            return status, answer
        time.sleep(LOGIN_REFILL_SECONDS / 4)


# Any 12 characters of a secret betray it, not only its whole value: the tests look for every run of 12.
WINDOW = 12


def _runs(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _pem_runs(value: str) -> set[str]:
    """The runs of a PEM private key's body that encode only bytes of its private numbers (RSA's d, p, q and the
    rest, EC's scalar): not the DER structure every key of its kind has (and TLS libraries' test keys), nor a run
    spanning it and a byte or two of the key (it would match one of those now and then), nor the public key."""
    key = serialization.load_pem_private_key(value.encode(), None)
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        numbers = [n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp]
    else:
        numbers = [key.private_numbers().private_value]
    body = [line for line in value.splitlines() if "-----" not in line]
    der = base64.b64decode("".join(body))
    private = set()
    for number in numbers:
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        at = der.find(raw)
        assert at >= 0, "a private number is not in the key's DER"
        private.update(range(at, at + len(raw)))
    runs, offset = set(), 0
    for line in body:
        for i in range(len(line) - WINDOW + 1):
            first, last = (offset + i) * 6 // 8, ((offset + i + WINDOW) * 6 - 1) // 8  # the bytes it encodes
            if private.issuperset(range(first, last + 1)):
                runs.add(line[i : i + WINDOW])
        offset += len(line)
    return runs


def secret_fragments(secrets: dict[str, str]) -> list[str]:
    """What would betray a secret: each whole value, and every run of 12 characters of its secret part: of each
    word of a line (the Synapse signing key's seed, not its public "ed25519 a_xyz"), and of a PEM key's body
    where it encodes its private numbers only."""
    fragments = set()
    for value in secrets.values():
        fragments.add(value.strip())
        if "-----BEGIN" in value:
            fragments |= _pem_runs(value)
            continue
        for word in value.split():
            fragments |= _runs(word)
    return sorted(fragments)


def pattern_file(fragments: list[str]) -> str:
    """grep -F -f's pattern file: one pattern per line, so a multi-line value (a PEM key) goes as its lines, which
    secret_fragments() lists already; its -----BEGIN/END----- lines are in every TLS library and are left out."""
    return "\n".join(f for f in fragments if "\n" not in f) + "\n"


def holding_secrets(lines, fragments) -> list[str]:
    """The lines holding a fragment (a run of 12 of a secret, or a whole value)."""
    runs = {f for f in fragments if len(f) == WINDOW}
    others = [f for f in fragments if len(f) != WINDOW]
    return [line for line in lines if _runs(line) & runs or any(f in line for f in others)]


class ExecTracer:
    """Every program started on this machine and in the lab containers while the block runs, each command line
    read as exec() returns (tests/support/exec_tracer.py, in a process of its own): sees processes that live a few
    milliseconds, which sampling /proc in a loop misses."""

    def __enter__(self):
        directory = Path(tempfile.mkdtemp(prefix="exec-trace-"))
        self.output, ready = directory / "execs", directory / "ready"
        self.proc = subprocess.Popen(["nice", "-n", "-10", sys.executable, str(Path(__file__).parent / "exec_tracer.py"),
                                      str(self.output), str(ready)])  # fmt: skip
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "the exec tracer did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        *lines, summary = self.output.read_text(errors="replace").splitlines()
        shutil.rmtree(self.output.parent)
        counts = dict(item.split("=") for item in summary.removeprefix("# ").split())
        self.lines, self.execs, self.overflows = lines, int(counts["execs"]), int(counts["overflows"])


class CommandLines:
    """Every process command line seen on the lab host and on this machine while the block runs.

    Two ways at once: every exec on this machine and in the lab containers, its command line read as
    exec() returns (ExecTracer); a loop over /proc/*/cmdline on the host (processes that rewrite their
    title after exec). `control(seed)` starts short-lived processes on the host
    (about 10 ms each) carrying a marker, and one carrying a real secret fragment, that must be seen.
    """

    SAMPLER = (
        "touch /root/sampling; nohup nice -n 19 sh -c 'while [ -e /root/sampling ]; do cat /proc/[0-9]*/cmdline"
        ' 2>/dev/null | tr "\\000" "\\n"; done | awk "!seen[\\$0]++" > /root/cmdlines\' >/dev/null 2>&1 &'
    )
    CONTROLS = 10

    def __init__(self, host: LabHost):
        self.host = host
        self.marker = "control-" + secrets.token_hex(8)
        self.tracer = ExecTracer()
        self.controls_started = 0

    def control(self, fragment: str) -> None:
        """Short-lived processes on the host: CONTROLS with the marker, one with the marker and `fragment`.

        Both reach the host through stdin, so neither is on this machine's command lines."""
        script = (
            "read marker; read fragment; "
            f"for i in $(seq {self.CONTROLS}); do sh -c 'sleep 0.01; true' \"$marker-$i\"; done; "
            'sh -c "sleep 0.01; true" "$marker-secret $fragment"'
        )
        sh(self.host, script, input=f"{self.marker}\n{fragment}\n")
        self.controls_started += 1

    def __enter__(self):
        assert ssh(self.host, self.SAMPLER).returncode == 0
        self.tracer.__enter__()
        return self

    def __exit__(self, *exc):
        self.tracer.__exit__(*exc)
        sh(self.host, "rm -f /root/sampling; sleep 1")
        host_lines = sh(self.host, "cat /root/cmdlines; rm -f /root/cmdlines").splitlines()
        self.traced = self.tracer.lines
        self.lines = host_lines + self.traced
        assert any("pyinfra" in line for line in self.lines) and any("mas-cli" in line for line in self.lines)

    def controls_seen(self) -> set[str]:
        """Which controls the exec tracer saw: "1".."CONTROLS" and "secret"."""
        return {m.group(1) for line in self.traced for m in [re.search(rf"{self.marker}-(\w+)", line)] if m}

    def without_controls(self) -> list[str]:
        return [line for line in self.lines if self.marker not in line]


class Watcher:
    """Another local, unprivileged user of the host (`watcher`) copying every file it can read, while
    the block runs (tests/support/watcher.py); afterwards root greps the copies for the secrets.

    Two loops: the places where short-lived files appear (walked every few milliseconds and woken by
    inotify), and the rest of the places a deploy writes to.
    """

    USER = "watcher"
    STORE = "/home/watcher/seen"
    STOP = "/run/watcher-stop"
    FAST = ["/tmp", "/var/tmp", "/dev/shm", "/run", "/home"]
    SLOW = ["/etc", "/var/lib", "/var/backups", "/var/log", "/opt"]

    def __init__(self, host: LabHost):
        self.host = host

    def __enter__(self):
        sh(self.host, f"id {self.USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/sh {self.USER}")
        sh(self.host, f"install -m 755 /dev/stdin /usr/local/bin/watcher.py && rm -rf {self.STORE} {self.STOP}",
           input=(Path(__file__).parent / "watcher.py").read_text())  # fmt: skip
        for roots in (self.FAST, self.SLOW):
            sh(self.host, f"runuser -u {self.USER} -- sh -c 'nohup python3 /usr/local/bin/watcher.py {self.STORE} "
                          f"{self.STOP} {' '.join(roots)} >/dev/null 2>&1 &'")  # fmt: skip
        # Started, and on its first walk: its store exists.
        sh(self.host, f"for i in $(seq 100); do [ -e {self.STORE}/index ] && exit 0; sleep 0.1; done; exit 1")
        return self

    def short_lived_control(self, fragment: str) -> str:
        """A world-readable file in /tmp holding `fragment` for about 0.2 s: the watch must copy it."""
        path = f"/tmp/watch-control-{secrets.token_hex(6)}"
        # Written in a 0700 directory, then renamed into /tmp: only the control's own name is ever readable.
        sh(self.host, f"d=$(mktemp -d) && cat > $d/f && chmod 644 $d/f && mv $d/f {path} && rmdir $d && sleep 0.2"
                      f" && rm {path}", input=fragment + "\n")  # fmt: skip
        return path

    def __exit__(self, *exc):
        sh(self.host, f"touch {self.STOP}; for i in $(seq 600); do pgrep -u {self.USER} -f watcher.py >/dev/null || exit 0;"
                      " sleep 0.1; done; exit 1")  # fmt: skip
        self.loops = sh(self.host, f"cat {self.STORE}/loops-*").split()
        assert len(self.loops) == 2, self.loops

    def found(self, fragments: list[str]) -> set[str]:
        """Paths whose copy (any version of it) holds a fragment; the fragments stay in a root-only file."""
        root_file(self.host, "/root/.secret-patterns", pattern_file(fragments))
        hits = sh(
            self.host,
            f"cd {self.STORE}/c && {{ grep -lF -r -f /root/.secret-patterns . ; rc=$?; }}; rm -f /root/.secret-patterns;"
            " [ $rc -le 1 ] || exit $rc",
        ).split()
        index = sh(self.host, f"cat {self.STORE}/index")
        names = {h.removeprefix("./") for h in hits}
        return {path for line in index.splitlines() for digest, path in [line.split("\t", 1)] if digest in names}


# Every file an unprivileged local user can read, on every filesystem of the host (tmpfs too), any size.
READABLE_BY_WATCHER = (
    "cd / && runuser -u watcher -- find / \\( -path /proc -o -path /sys -o -path /home/watcher/seen -o \\( -type d ! \\( -readable -executable \\) \\) \\)"
    " -prune -o -type f -readable -print0"
)


def readable_files_holding(host: LabHost, fragments: list[str]) -> set[str]:
    """Files on the host that the unprivileged user `watcher` can read and that hold a fragment.

    The user lists what it can read (every filesystem, any size, only /proc and /sys skipped); root
    greps those files for the fragments, kept in a root-only file. Every step's exit status is checked.
    """
    root_file(host, "/root/.secret-patterns", pattern_file(fragments))
    out = sh(
        host,
        "set -o pipefail 2>/dev/null || true\n"
        f"{READABLE_BY_WATCHER} > /root/readable 2> /root/find-errors; listed=$?\n"
        # A file that vanished during the walk (a runtime file) is not an error of the search.
        "if [ $listed = 1 ] && ! grep -qv 'No such file or directory$' /root/find-errors; then listed=0; fi\n"
        # grep: 0 found, 1 nothing found, 2 an error; a file that vanished meanwhile is no error.
        "xargs -0 -r sh -c 'grep -lF -f /root/.secret-patterns -- \"$@\" 2>>/root/find-errors; [ $? -le 1 ]' sh"
        " < /root/readable; grepped=$?\n"
        "if [ $grepped != 0 ] && ! grep -qv 'No such file or directory$' /root/find-errors; then grepped=0; fi\n"
        "head -c 1000 /root/find-errors | tr '\\n' '|' | sed 's/^/errors=/'; echo\n"
        "echo \"listed=$listed files=$(tr -cd '\\0' < /root/readable | wc -c) grepped=$grepped\"\n"
        "rm -f /root/.secret-patterns /root/readable /root/find-errors\n",
    )
    *found, errors, summary = out.splitlines()
    status = dict(item.split("=") for item in summary.split())
    assert status["listed"] == "0" and status["grepped"] == "0", (summary, errors)
    assert int(status["files"]) > 10000, summary
    return set(found)
