import sys

from driftd.cli import main

sys.exit(main())
