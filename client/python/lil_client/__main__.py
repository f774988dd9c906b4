"""``python -m lil_client`` is ``lil-client``."""

from lil_client.cli import main

raise SystemExit(main())
