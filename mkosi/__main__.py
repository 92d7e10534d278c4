"""`python -m mkosi`: the installed `mkosi` command (pyproject's entry point), run as a module.

The entry point lives in matrix.command so that mkosi itself never imports the matrix; it is
imported here only when this file runs as a program, and sends every command line but
`mkosi [-C DIR] matrix ...` to mkosi.cli unchanged.
"""

if __name__ == "__main__":
    from matrix.command import entry

    entry()
