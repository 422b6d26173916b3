"""`python -m widthsearch ...` (also what `torchrun -m widthsearch ...` runs)."""

from widthsearch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
