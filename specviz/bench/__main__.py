"""`python -m specviz.bench`: see `specviz.bench.cli`."""

import sys

from specviz.bench.cli import main

sys.exit(main())
