"""The lab's second homeserver, peer.test, which `LAYOUT=pair make lab` boots beside lab.test to federate
with it (matrix_deploy/lab/inventories.py)."""

from matrix_deploy.lab.inventories import groups
from matrix_deploy.operator.inventory import check

_groups = groups("peer.test", __file__)
db, mas, synapse, proxy = _groups["db"], _groups["mas"], _groups["synapse"], _groups["proxy"]
old_synapse = _groups["old_synapse"]  # only while adopting a Synapse from a host of its own

check(__file__)
