"""Runs the lab test modules in two pytest processes side by side, each with a lab of its own.

pytest-xdist cannot run these tests (pyinfra's gevent blocks its workers), so `make test` runs the
unit tests, then this: two groups of lab modules of about equal length, on MATRIX_DEPLOY_LAB_INDEX
0 and 1, each line prefixed with its lab; the exit status fails if either group fails.
"""

import os
import subprocess
import sys
import threading

GROUPS = [
    ["tests/test_e2e.py", "tests/test_split.py", "tests/test_federation.py"],
    ["tests/test_msc3861.py", "tests/test_resilience.py", "tests/test_lab.py", "tests/test_workers.py"],
]


def main() -> int:
    procs = []
    for index, files in enumerate(GROUPS):
        env = {**os.environ, "MATRIX_DEPLOY_LAB_INDEX": str(index)}
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *files], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        thread = threading.Thread(target=lambda p=proc, i=index: [print(f"[lab{i}] {line}", end="", flush=True)
                                                                   for line in p.stdout], daemon=True)  # fmt: skip
        thread.start()
        procs.append((proc, thread))
    codes = []
    for proc, thread in procs:
        codes.append(proc.wait())
        thread.join()
    print(f"lab test groups: exit statuses {codes}")
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
