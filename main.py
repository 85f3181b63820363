"""Double-click / `python main.py` entry point: opens the nbdesk desktop app."""

import sys

from nbdesk.launcher import entry

if __name__ == "__main__":
    entry(sys.argv[1:] or ["gui"])
