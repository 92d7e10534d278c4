import sys

from matrix.cli import main
from mkosi.errors import MkosiError

try:
    sys.exit(main(sys.argv[1:]))
except MkosiError as error:
    print(f"mkosi matrix: {error}", file=sys.stderr)
    sys.exit(error.exit_status)
