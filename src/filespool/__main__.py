"""`python -m filespool`: the command line."""

from filespool.cli import main

raise SystemExit(main())
