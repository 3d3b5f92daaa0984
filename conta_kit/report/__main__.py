"""``python -m conta_kit.report``: see :mod:`conta_kit.report.markdown`."""

import sys

from .markdown import main

sys.exit(main())
