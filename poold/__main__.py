"""`python -m poold` is the `poold` console script."""

from poold.cli import main

raise SystemExit(main())
