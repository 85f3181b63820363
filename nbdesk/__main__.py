from nbdesk.launcher import entry

entry()
