import sys

from nbdesk.cli import main

sys.exit(main())
