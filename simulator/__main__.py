"""`python -m simulator ...`: the same CLI as `threads-poller simulate`."""

from simulator.server import main

raise SystemExit(main())
