"""`matrix-deploy verify`'s reading of `mas-cli doctor` and its SSH login, without hosts."""

from pathlib import Path

from matrix_deploy.operator import verify
from matrix_deploy.operator.inventory import Deployment

# As MAS 1.22.0 prints it (seen running this deployment: `... INFO mas_cli::commands::doctor:312 ✅ ...`).
DOCTOR = """\x1b[2m2026-12-03T09:00:00.1Z\x1b[0m \x1b[32m INFO\x1b[0m mas_cli::commands::doctor:30 💡 Running diagnostics, make sure that both MAS and Synapse are running
2026-12-03T09:00:00.2Z  INFO mas_cli::commands::doctor:134 ✅ Homeserver is reachable at "http://hs:8008/_matrix/client/versions"
2026-12-03T09:00:00.3Z ERROR mas_cli::commands::doctor:246 ❌ A Synapse MAS API endpoint at "http://hs:8008/x" replied with 403.
Make sure the homeserver is running, and that the MAS config has the correct `matrix.secret`.
    secret: "sup3r-secret-value-12345"
2026-12-03T09:00:00.4Z  WARN mas_cli::commands::doctor:316 ⚠️ The legacy login API at "https://m/_matrix/client/v3/login" is reachable, but it doesn't look to be handled by MAS.
"""  # noqa: E501


def test_each_finding_with_its_level_and_every_secret_masked():
    found = verify.doctor_findings(DOCTOR, ["sup3r-secret-value-12345", "short"])
    assert [level for level, _ in found] == ["INFO", "ERROR", "WARN"]
    assert found[0][1] == 'Homeserver is reachable at "http://hs:8008/_matrix/client/versions"'
    assert found[1][1].startswith('A Synapse MAS API endpoint at "http://hs:8008/x" replied with 403. | Make sure')
    assert "sup3r-secret" not in str(found) and 'secret: "<secret>"' in found[1][1]


def test_doctor_runs_as_the_inventory_logs_in(deployment):
    d = Deployment(deployment.inventory, deployment.settings, deployment.secrets, deployment.secrets_file,
                   {"hs1": "192.0.2.7"}, {"hs1": {"ssh_user": "deploy", "ssh_port": 2222, "ssh_key": "/k", "_sudo": True}})  # fmt: skip
    argv = verify.ssh_command(d, "hs1", "cd /opt && ./x")
    assert argv[-2:] == ["deploy@192.0.2.7", "sudo -n sh -c 'cd /opt && ./x'"]
    assert ["-p", "2222"] == argv[argv.index("-p") : argv.index("-p") + 2] and "/k" in argv
    assert isinstance(d.inventory, Path)
