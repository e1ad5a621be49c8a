"""`make bench`'s scale rows: the scale layout (`LAYOUT=scale`: two Synapse hosts with workers, two MAS instances)
against the single host measured just before: its fresh install, its no-op re-run, and the commands each host
gets in a no-op run."""

import json
import re
import statistics
from collections import Counter

from matrix_deploy import lab
from matrix_deploy.lab.probe import LAB_SETTINGS, changed_operations


def measure(run, settings: dict, single_fresh: float, single_noop: float, repeat: int) -> list[tuple]:
    """Rows for bench.py's table; `run` is its pyinfra runner, `settings` the single host's lab settings."""
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down(log=lambda *_: None)
    hosts = lab.up("scale")
    try:
        LAB_SETTINGS.write_text(json.dumps(settings))
        fresh, _ = run()
        noops = []
        for _ in range(repeat):
            elapsed, noop = run()
            noops.append(elapsed)
        changes = len(changed_operations(noop.stdout))
        _, debug = run("--debug")
        commands = Counter(re.findall(r"Running command on (\S+):", debug.stdout))
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)
    noop = statistics.median(noops)
    layout = f"scale layout ({len(hosts)} hosts)"
    return [
        (f"{layout}, fresh install / single host's", f"{fresh:.0f} s / {single_fresh:.0f} s = {fresh / single_fresh:.2f}x",
         "(watch for regressions)", None),
        (f"{layout}, no-op re-run / single host's (median of {repeat})",
         f"{noop:.1f} s / {single_noop:.1f} s = {noop / single_noop:.2f}x", "<= 1.3x", noop <= 1.3 * single_noop),
        (f"{layout}, no-op re-run: changes reported", str(changes), "0", changes == 0),
        (f"{layout}, no-op re-run: commands sent per host", ", ".join(f"{h.name} {commands[h.name]}" for h in hosts),
         "(watch for regressions)", None),
    ]  # fmt: skip
