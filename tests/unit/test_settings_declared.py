"""Each setting is declared once, in matrix_deploy/options.py: the defaults every host gets from group_data/all.py
and the README's settings table are made from those declarations."""

from dataclasses import fields

from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from matrix_deploy.operator import options
from matrix_deploy.operator.settings import Settings
from tests.conftest import ROOT


def test_readme_settings_table_is_made_from_the_declarations():
    text = options.README.read_text()
    assert options.with_table(text) == text, "the README's settings table is behind: run `make docs`"


def test_group_data_gives_every_host_the_declared_defaults(tmp_path):
    """As pyinfra reads it: group_data/all.py's names are the data of every host, and nothing else is."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text('db = ["hs1"]\n')
    with ctx_state.use(State()):
        (host,) = make_inventory_from_files(str(inventory), cwd=str(ROOT))
    data = host.data.dict()
    assert {k: data[k] for k in options.BY_NAME} == options.defaults()
    assert not set(data) - set(options.BY_NAME) - {"ssh_hostname"}, data


def test_settings_fields_are_the_deployment_wide_settings_by_name():
    """Readers of the code see each setting under its own name (internal_address lives in settings.placement;
    synapse_workers, per host, is a mapping of Synapse host to its value)."""
    named = [o.name for o in options.OPTIONS if o.name != "internal_address"]
    assert [f.name for f in fields(Settings)] == [*named, "placement"]


def test_removed_settings_are_not_declared():
    assert not set(options.BY_NAME) & set(options.REMOVED)


def test_every_lab_module_is_in_a_parallel_group():
    """`make test` runs lab modules only through tests/support/parallel.py: one left out would never run, unless it
    is named among those run by hand (BY_HAND), with what in the groups covers its ground."""
    from tests.support.parallel import BY_HAND, GROUPS

    marked = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "\npytestmark = pytest.mark.lab" in p.read_text()
    }
    grouped = [f for group in GROUPS for f in group]
    assert sorted(grouped + list(BY_HAND)) == sorted(marked) and len(set(grouped)) == len(grouped)
    assert not set(BY_HAND) & set(grouped) and len(BY_HAND) <= 1, BY_HAND
