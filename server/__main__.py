"""``python -m server ...`` is ``lil-sparse serve ...``."""

from server.cli import main

raise SystemExit(main())
