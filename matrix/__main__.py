import sys

from matrix.cli import run

run(sys.argv[1:])
