"""``python -m land`` (and ``PythonSlicer -m land``) runs the CLI."""

from land.cli import main

raise SystemExit(main())
