"""``python -m survey_proc``: the command line."""

import sys

from survey_proc.cli import main

if __name__ == "__main__":
    sys.exit(main())
