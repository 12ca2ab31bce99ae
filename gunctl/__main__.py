"""``python -m gunctl`` (also what torchrun runs)."""

from gunctl.cli import main

if __name__ == "__main__":
    main()
