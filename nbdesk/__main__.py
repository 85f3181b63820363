from nbdesk.cli import entry

entry()
