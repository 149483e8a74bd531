"""``python -m analysis.make_all``, kept as an alias of ``python -m dmh.report.make_all`` for the commands written
before the report moved into the installed package (issue 30)."""

import sys

from dmh.report.make_all import main

if __name__ == "__main__":
    sys.exit(main())
