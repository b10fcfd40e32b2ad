"""``python -m attention_edit.runner WORKFLOW [options]``: see headless/runner.py."""
import sys

from ..headless.runner import main

sys.exit(main())
