"""Starting and configuring services: the local stack (``groupdiff up``) and the production compose file.

Imports nothing from ``groupdiff``, ``registry`` or ``flows``.
"""
