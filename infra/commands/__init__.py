"""Platform subcommands of the ``groupdiff`` console script (``run``, ``up``, ``down``, ``status``, ``check``):
they sit on top of the layers (flows, registry, infra) and are dispatched by :mod:`infra.cli`."""
