"""``python -m orchestrator.gpucheck``: the CLI edge (``orchestrator.gpucheck.cli``)."""

import sys

from .cli import main

sys.exit(main())
