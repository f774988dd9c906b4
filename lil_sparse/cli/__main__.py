from lil_sparse.cli.main import main

raise SystemExit(main())
