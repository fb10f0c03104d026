"""``python -m model.cli`` (and ``torchrun -m model.cli``): the ``dalle`` command."""

import sys

from model.cli import main

sys.exit(main())
