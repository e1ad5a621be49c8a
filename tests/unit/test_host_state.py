"""host_state's snapshot: what its one command prints is read back into what the operations compare.

The command itself runs against real hosts in every lab test (a no-op run sends only it); here the
parsing and the comparisons are pinned down, including the refusal to answer outside its roots.
"""

import pytest

from matrix_deploy.engine.host_state import Snapshot, sha1

# sha1 of b"s3cret", as `printf s3cret | sha1sum` prints it: pinned, not recomputed with the product's sha1().
S3CRET_SHA1 = "fef341f85d87439e7d91a2d465b9871ef66b5e98"

OUTPUT = [
    "P\td\troot\tmas\t750\t\t/etc/mas",
    "P\tf\tmas\tmas\t400\t\t/etc/mas/secrets/matrix_secret",
    "P\tl\troot\troot\t777\t/opt/mas/1.22.0\t/opt/mas/current",
    "H\tfef341f85d87439e7d91a2d465b9871ef66b5e98  /etc/mas/secrets/matrix_secret",
    "U\tmas:x:999:997::/opt/mas:/usr/sbin/nologin",
    "G\tmas:x:997:",
    "K\tnginx\tii ",
    "K\tcurl\trc ",
    "S\tpostgresql@15-main\tactive\tenabled",
]
ROOTS = {"/etc/mas": 2, "/opt/mas": 2}


def snapshot(output=OUTPUT):
    state = Snapshot().process(output)
    state.roots = ROOTS
    return state


def test_files_match_only_with_the_same_content_owner_and_mode():
    state = snapshot()
    path = "/etc/mas/secrets/matrix_secret"
    assert state.is_file(path, "s3cret", "mas", "mas", "400")
    assert not state.is_file(path, "s3cret\n", "mas", "mas", "400")
    assert not state.is_file(path, "s3cret", "root", "mas", "400")
    assert not state.is_file(path, "s3cret", "mas", "mas", "440")
    assert not state.is_file("/etc/mas/secrets/missing", "s3cret")


def test_directories_links_users_packages_units():
    state = snapshot()
    assert state.is_dir("/etc/mas", "root", "mas", "750") and not state.is_dir("/etc/mas", mode="755")
    assert state.is_link("/opt/mas/current", "/opt/mas/1.22.0") and not state.is_link("/opt/mas/current", "/x")
    assert state.has_user("mas", "mas", "/opt/mas", "/usr/sbin/nologin")
    assert not state.has_user("mas", "mas", "/var/lib/mas", "/usr/sbin/nologin")
    assert state.packages_installed(["nginx"]) and not state.packages_installed(["nginx", "curl"])
    assert state.unit_running("postgresql@15-main") and not state.unit_running("nginx")
    assert not state.apt_busy and snapshot([*OUTPUT, "B"]).apt_busy


def test_a_path_outside_the_roots_is_a_programming_error_not_a_missing_file():
    state = snapshot()
    with pytest.raises(LookupError, match="outside the host state snapshot"):
        state.exists("/etc/synapse/homeserver.yaml")
    with pytest.raises(LookupError):
        state.exists("/etc/mas/a/b/c")  # deeper than the root was listed


def test_sha1_is_the_hex_digest_of_the_utf8_content():
    assert sha1("s3cret") == S3CRET_SHA1
    assert sha1("native\n") == "c087e136b92cf46e7382a205335bf2d1109fad6f"
    assert sha1("") == "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def test_the_snapshot_command_output_is_read_as_the_host_printed_it():
    """A line exactly as find -printf and sha1sum print them, tabs and two spaces included."""
    state = snapshot()
    entry = state.entry("/etc/mas/secrets/matrix_secret")
    assert (entry.kind, entry.user, entry.group, entry.mode, entry.sha1) == ("f", "mas", "mas", 0o400, S3CRET_SHA1)
    assert state.entry("/opt/mas/current").target == "/opt/mas/1.22.0"
    assert state.users["mas"] == ["mas", "x", "999", "997", "", "/opt/mas", "/usr/sbin/nologin"]
    assert state.units["postgresql@15-main"] == ("active", "enabled")


def test_every_role_declares_what_it_reads_and_every_host_reads_every_roles_paths():
    from matrix_deploy.operator.settings import ROLES
    from matrix_deploy.services import roles as services

    assert set(services.ROLE_MODULES) == set(ROLES)
    needs = services.snapshot_needs({"db"}, "acme")
    for module in services.ROLE_MODULES.values():
        assert module.NEEDS.paths.items() <= needs.paths.items() and set(module.NEEDS.users) <= set(needs.users)
    assert needs.packages == ("postgresql",) and "certbot" in services.packages({"proxy"}, "acme")


def test_a_probes_answer_is_read_back_by_its_name_and_a_failing_probe_cannot_stop_the_snapshot():
    import subprocess

    command = Snapshot().command({}, [], [], [], "true", probes={"mine": "echo first; echo second >&2; false"})
    # The probe's lines, stderr included, each tagged with its name; what follows it in the command still runs.
    probe_part = command[command.index("{ echo first") : command.index("/'", command.index("{ echo first")) + 2]
    out = subprocess.run(["sh", "-c", probe_part + "\necho after"], capture_output=True, text=True).stdout
    assert out.splitlines() == ["R\tmine\tfirst", "R\tmine\tsecond", "after"]
    state = snapshot([*OUTPUT, "R\tmine\tfirst", "R\tmine\tsecond", "R\tother\tok"])
    assert state.probes == {"mine": ["first", "second"], "other": ["ok"]}
    assert snapshot().probes == {}
