"""The course report built from run directories: `dlcv report RUN_DIR... --out report.html`."""
