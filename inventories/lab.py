"""The lab's homeserver lab.test: whatever `make lab-up` booted, deployed with the lab's settings
(matrix_deploy/lab/inventories.py). With LAYOUT=pair, inventories/lab_peer.py is its peer."""

from matrix_deploy.lab.inventories import groups
from matrix_deploy.operator.inventory import check

_groups = groups("lab.test", __file__)
db, mas, synapse, proxy = _groups["db"], _groups["mas"], _groups["synapse"], _groups["proxy"]
old_synapse = _groups["old_synapse"]  # only while adopting a Synapse from a host of its own

check(__file__)
