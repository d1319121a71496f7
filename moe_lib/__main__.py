from moe_lib.cli import main

raise SystemExit(main())
