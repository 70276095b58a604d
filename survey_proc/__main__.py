from survey_proc.cli import main
import sys
sys.exit(main())
