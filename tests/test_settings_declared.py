"""Every setting is declared in one place with its default (group_data/all.py), checked by settings.py,
and documented in the README's table: the three name the same settings, with the same defaults."""

import re

from matrix_deploy.settings import DEPLOYMENT_KEYS, HOST_KEYS, REMOVED_KEYS
from tests.conftest import ROOT, defaults


def readme_table() -> dict[str, str]:
    """setting -> default column of the README's settings table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        names, default = line.split(" | ")[0], line.split(" | ")[1]
        for name in re.findall(r"`([a-z0-9_]+)`", names):
            rows[name] = default
    return rows


def test_group_data_settings_and_readme_name_the_same_settings():
    declared = set(defaults())
    assert declared == set(DEPLOYMENT_KEYS) | set(HOST_KEYS), "group_data/all.py vs settings.py"
    assert set(readme_table()) == declared, "README's settings table vs group_data/all.py"
    assert not declared & set(REMOVED_KEYS)


def test_readme_defaults_are_the_declared_ones():
    table = readme_table()
    for name, value in defaults().items():
        shown = table[name]
        if value is None:
            assert shown.startswith(("unset", "(required)", "the host's")) or "<server name>" in shown, (name, shown)
        elif isinstance(value, (bool, int)) or (isinstance(value, str) and len(value) < 40):
            assert shown.strip("`") == str(value), (name, value, shown)
        elif value in ({}, []):
            assert shown.strip("`") == repr(value), (name, value, shown)


def test_every_lab_module_is_in_a_parallel_group():
    """`make test` runs lab modules only through tests/parallel.py: one left out would never run."""
    from tests.parallel import GROUPS

    marked = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if "\npytestmark = pytest.mark.lab" in p.read_text()
    }
    grouped = [f for group in GROUPS for f in group]
    assert sorted(grouped) == sorted(marked) and len(set(grouped)) == len(grouped)
