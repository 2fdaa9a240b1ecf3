"""`python -m omcli ...` runs the `om` command (e.g. under `torchrun ... -m omcli train RECIPE`)."""

from omcli.app import main

if __name__ == "__main__":
    main()
