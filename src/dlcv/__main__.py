from dlcv.cli import main

raise SystemExit(main())
