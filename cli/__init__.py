"""The ``detstack`` console script: the top layer, which assembles every stage's subcommands.

Nothing imports this package; see :mod:`cli.main`.
"""
