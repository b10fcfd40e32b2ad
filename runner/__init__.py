"""``python -m attention_edit.runner``: the headless runner's command line (the code is headless/runner.py)."""
