"""``python -m studio``, and the entry point of the frozen app (build.spec)."""

import sys

from studio.app import main

if __name__ == "__main__":
    sys.exit(main())
