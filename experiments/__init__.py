"""The shipped experiment configs, installed as ``seqarch.experiments`` (package data ``*.yaml``).

``seqarch compare NAME`` runs ``NAME.yaml`` from here; ``seqarch compare`` alone runs ``mqar.yaml``.
"""
