"""Delegation between MAS and Synapse (native or msc3861): its settings (options) and the mode recorded on each
MAS and Synapse host (service). Both services use it: their declared interface to each other."""
