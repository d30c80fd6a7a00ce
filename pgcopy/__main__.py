from pgcopy.cli import main

raise SystemExit(main())
