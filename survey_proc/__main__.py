import sys

from survey_proc.cli import main

sys.exit(main())
