"""Double-click / `python main.py` entry point: opens the nbdesk desktop app."""

import sys

from nbdesk.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gui"]))
