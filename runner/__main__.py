"""``python -m attention_edit.runner WORKFLOW [options]``: see runner/run.py."""
import sys

from .run import main

sys.exit(main())
