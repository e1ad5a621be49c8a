"""Config files that only go live once their service's own checker accepts them."""

import shlex

from pyinfra import state

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.host_state import show_diff


def install_checked(
    path: str, content: str, check: str, user: str, group: str, mode: str, service: str, recheck=(), secrets=()
):
    """
    Stage `content` beside `path`, then put it live only if `check` (run against the live path)
    passes; otherwise restore the previous file and fail with the checker's output.

    The running service never sees a rejected file. Whether to install is decided by comparing the
    live file with `content`, so a rejected or half-installed candidate is checked again next run.
    The file is also checked again when any `recheck` operation changed something (a new binary
    must accept the running config).
    Returns the operation that put the file live (did_change() means the service must restart), or
    None when the live file is already as wanted and nothing asks for a recheck.
    """
    candidate = f"{path}.candidate"
    host_state.put(f"Stage {path}", candidate, content, user="root", group=group, mode="640", diff=False)
    # Install whenever the live file is not what we want: this also covers a run that died
    # between staging and installing, and a candidate rejected earlier.
    differs = not host_state.current().is_file(path, content, user, group, mode)
    if differs and state.config.DIFF:
        show_diff(path, content, secrets)
    recheck = [op for op in recheck if op is not None]
    if not differs and not recheck:
        return None
    p, c = shlex.quote(path), shlex.quote(candidate)
    script = f"""
set -e
if [ -e {p} ]; then cp -p {p} {p}.previous; else rm -f {p}.previous; fi
install -o {user} -g {group} -m {mode} {c} {p}
if ! out=$({check} 2>&1); then
    if [ -e {p}.previous ]; then mv {p}.previous {p}; else rm -f {p}; fi
    rm -f {c}
    echo "{service}: the new {path} was rejected by its checker; the running service keeps the old one:" >&2
    echo "$out" >&2
    exit 1
fi
rm -f {p}.previous
"""
    return remote.shell(
        name=f"Check and install {path}",
        commands=[script],
        _if=lambda: differs or any(op.did_change() for op in recheck),
    )
