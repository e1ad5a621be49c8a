"""`make bench`: how fast a deploy is, against the floor, on lab hosts. Prints one table.

A benchmark, not a test: it prints figures and whether each target is met. Ratios are measured side
by side in the same run (these machines are noisy); cheap runs are repeated and their median shown.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import adoption  # noqa: E402  (bench/ beside this script)
import backup  # noqa: E402
import scale  # noqa: E402
from downtime import Poller, introspection, login, whoami  # noqa: E402

from matrix_deploy import lab  # noqa: E402
from matrix_deploy.lab.probe import LAB_SETTINGS, changed_operations, fetch, service_stamps, ssh  # noqa: E402
from matrix_deploy.lab.release import prepare as prepare_release  # noqa: E402
from matrix_deploy.lab.release import real_for_all  # noqa: E402
from matrix_deploy.services import roles as services  # noqa: E402
from matrix_deploy.services.synapse import locks  # noqa: E402

REPEAT = 5
# The fresh install gets the older versions, the upgrades then go to the newer ones (each a lock / a stand-in release).
OLD = {"synapse_version": "1.162.0", "mas_version": "1.21.0"}
NEW = {"synapse_version": "1.163.2", "mas_version": "1.22.0"}
REAL_MAS = real_for_all({OLD["mas_version"], NEW["mas_version"]})  # one database through both: all real or none


def run(*args, inventory="inventories/lab.py", deploy="deploy.py") -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / ".venv/bin/pyinfra"), "-y", *args, inventory, deploy],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"bench: {deploy} failed:\n{result.stdout[-3000:]}")
    return elapsed, result


def floor(host: lab.LabHost, release: dict, synapse_version: str) -> float:
    """The same Debian and Python packages (the lock's) with plain apt-get and pip, and MAS unpacked: nothing else."""
    packages = " ".join(services.packages(set(lab.ROLES), "acme"))
    started = time.monotonic()
    lock = locks.path(synapse_version)
    for src, dest in ((release["file"], "/root/mas.tar.gz"), (str(lock), "/root/synapse.lock")):
        subprocess.run(["scp", "-q", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o",
                        "UserKnownHostsFile=/dev/null", src, f"root@{host.address}:{dest}"], check=True)  # fmt: skip
    script = (
        f"set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null; apt-get install -y -q {packages} >/dev/null;"
        " python3 -m venv /opt/floor; /opt/floor/bin/pip install -q --no-deps --require-hashes --only-binary :all:"
        " -r /root/synapse.lock;"
        " mkdir -p /opt/floor-mas; tar -xzf /root/mas.tar.gz -C /opt/floor-mas"
    )
    result = ssh(host, script)
    if result.returncode != 0:
        sys.exit(f"bench: floor failed: {result.stderr[-2000:]}")
    return time.monotonic() - started


def load() -> str:
    """The machine's load (1, 5 and 15 minutes) and core count: ratios drift when other work shares the cores."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) + f" on {os.cpu_count()} cores"


def fresh_install() -> tuple[float, float, lab.LabHost]:
    """The fresh install and its floor, one after the other on two fresh lab hosts: (deploy, floor, deploy's host)."""
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()
    deploy_host, floor_host = lab.up(spec=[("bench1", lab.ROLES), ("bench2", ())])
    print(f"bench: floor starts ({load()})", flush=True)
    release = prepare_release(OLD["mas_version"], real=REAL_MAS)
    floor_time = floor(floor_host, release, OLD["synapse_version"])
    LAB_SETTINGS.write_text(json.dumps(OLD))
    print(f"bench: fresh install starts ({load()})", flush=True)
    fresh_time, _ = run()
    print(f"bench: fresh install {fresh_time:.0f} s / floor {floor_time:.0f} s = {fresh_time / floor_time:.2f}x ({load()})",
          flush=True)  # fmt: skip
    return fresh_time, floor_time, deploy_host


def main() -> None:
    if sys.argv[1:] == ["--fresh"]:  # the fresh install against its floor alone
        try:
            fresh_install()
        finally:
            LAB_SETTINGS.unlink(missing_ok=True)
            lab.down(log=lambda *_: None)
        return
    if sys.argv[1:] == ["--scale"]:  # the scale layout against the single host alone
        try:
            fresh_time, _, _ = fresh_install()
            noop_median = statistics.median(run()[0] for _ in range(REPEAT))
        finally:
            LAB_SETTINGS.unlink(missing_ok=True)
            lab.down(log=lambda *_: None)
        table(scale.measure(run, OLD, fresh_time, noop_median, REPEAT))
        return
    if sys.argv[1:] == ["--backup"]:  # the backup and the restore onto a fresh host alone
        prepare_release(NEW["mas_version"], real=REAL_MAS)
        table(backup.measure(run, NEW))
        return
    if sys.argv[1:] == ["--adoption"]:  # the adoption of a generated homeserver alone
        prepare_release(NEW["mas_version"])  # one MAS version: the real one whenever MAS_RELEASE is it
        table(adoption.measure(run, NEW))
        return
    try:
        fresh_time, floor_time, deploy_host = fresh_install()

        noop_times, noop = [], None
        for _ in range(REPEAT):
            elapsed, noop = run()
            noop_times.append(elapsed)
        noop_changes = len(changed_operations(noop.stdout))
        _, debug = run("--debug")
        commands = debug.stdout.count("Running command on")
        inventory = ROOT / "bench/trivial_inventory.py"
        run(inventory=str(inventory), deploy="bench/trivial.py")
        trivial_times = [run(inventory=str(inventory), deploy="bench/trivial.py")[0] for _ in range(REPEAT)]

        # Upgrades, each while a client polls an authenticated request through nginx every 100 ms.
        token = login(deploy_host)
        LAB_SETTINGS.write_text(json.dumps({**OLD, "synapse_version": NEW["synapse_version"]}))
        with Poller(whoami(deploy_host, token)) as synapse_upgrade:
            synapse_upgrade_time, _ = run()
        prepare_release(NEW["mas_version"], real=REAL_MAS)
        LAB_SETTINGS.write_text(json.dumps(NEW))
        # Synapse caches an introspected token for 2 minutes: MAS itself is polled, as Synapse asks it.
        with Poller(introspection(deploy_host, token)) as mas_upgrade, Poller(whoami(deploy_host, token)) as mas_whoami:
            mas_upgrade_time, _ = run()

        before = service_stamps(deploy_host)
        LAB_SETTINGS.write_text(json.dumps({**NEW, "synapse_extra_config": {"max_upload_size": "20M"}}))
        started = time.monotonic()
        run()
        while fetch(deploy_host, "GET", "/_matrix/client/versions")[0] != 200:
            time.sleep(0.1)
        change_time = time.monotonic() - started
        after = service_stamps(deploy_host)
        restarted = sorted(name for name in before if before[name] != after[name])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)

    noop_median, trivial_median = statistics.median(noop_times), statistics.median(trivial_times)
    scale_rows = scale.measure(run, OLD, fresh_time, noop_median, REPEAT)
    backup_rows = backup.measure(run, NEW)  # the release prepared last is NEW's
    prepare_release(NEW["mas_version"])
    adoption_rows = adoption.measure(run, NEW)
    rows = [
        ("fresh install: deploy / floor", f"{fresh_time:.0f} s / {floor_time:.0f} s = {fresh_time / floor_time:.2f}x",
         "<= 1.15x", fresh_time <= 1.15 * floor_time),
        (f"no-op re-run: full stack / trivial 5-op (median of {REPEAT})",
         f"{noop_median:.1f} s / {trivial_median:.1f} s = {noop_median / trivial_median:.1f}x", "<= 3x",
         noop_median <= 3 * trivial_median),
        ("no-op re-run: changes reported", str(noop_changes), "0", noop_changes == 0),
        ("one Synapse setting changed: run start until it answers again", f"{change_time:.1f} s", "<= 10 s", change_time <= 10),
        ("one Synapse setting changed: restarted", ", ".join(restarted) or "nothing", "synapse only", restarted == ["synapse"]),
        (f"Synapse upgrade {OLD['synapse_version']} -> {NEW['synapse_version']}: failed whoami through nginx, every 100 ms",
         f"{synapse_upgrade.downtime():.1f} s ({synapse_upgrade.failed()} failed; run {synapse_upgrade_time:.0f} s)",
         "< 2 s", synapse_upgrade.downtime() < 2),
        (f"MAS upgrade {OLD['mas_version']} -> {NEW['mas_version']}: failed introspection at MAS through nginx, every 100 ms",
         f"{mas_upgrade.downtime():.1f} s ({mas_upgrade.failed()} failed; whoami {mas_whoami.downtime():.1f} s;"
         f" run {mas_upgrade_time:.0f} s)", "< 2 s", mas_upgrade.downtime() < 2),
        ("no-op re-run: commands sent to the host", str(commands), "(watch for regressions)", None),
        ("peak memory of a deploy process (operator side)", f"{peak_mb:.0f} MB", "", None),
        *scale_rows,
        *backup_rows,
        *adoption_rows,
    ]  # fmt: skip
    table(rows)


def table(rows: list[tuple]) -> None:
    print(
        f"\nmatrix-deploy bench, {date.today()}, {platform.node()} ({platform.machine()}, {os.cpu_count()} cores; {load()} at the end)\n"
    )
    print("| measure | result | target | met |\n|---|---|---|---|")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'-' if met is None else 'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
