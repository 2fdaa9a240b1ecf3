"""The `om` command line: parses arguments, calls into `om`, prints results."""
