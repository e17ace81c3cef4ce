from raysegment.cli import main

raise SystemExit(main())
