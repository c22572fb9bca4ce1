"""``python -m scellst.cli``."""

import sys

from . import main

sys.exit(main())
