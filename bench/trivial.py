"""The benchmark's yardstick: a trivial 5-operation deploy (directories and a file), re-run with no change."""

from pyinfra.operations import files

for i in range(4):
    files.directory(name=f"trivial directory {i}", path=f"/var/tmp/bench-trivial/{i}", mode="755")
files.line(name="trivial line", path="/var/tmp/bench-trivial/file", line="bench")
