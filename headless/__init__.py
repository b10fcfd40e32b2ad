"""The headless host: ComfyUI run in this process through its own executor (``host``), the runner that executes
shipped workflows from the command line (``runner``), the UI/API workflow converter (``ui_format``) and sample
photos (``photos``)."""
