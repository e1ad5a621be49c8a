# Every setting's default, as pyinfra's data for all hosts. Each setting is declared once, with its check
# and meaning, in matrix_deploy/options.py (the README's settings table is made from it). Override any of
# them in an inventory (group data of `all`, or a group such as `synapse`) or in group_data/<group>.py.
from matrix_deploy.operator.options import defaults

# pyinfra takes this file's top-level names as data, leaving out imported ones.
globals().update(defaults())
