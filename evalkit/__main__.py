"""`python -m evalkit ...` (what torchrun launches): the same commands as the `evalkit` script."""

from evalkit.cli import main

if __name__ == "__main__":
    main()
