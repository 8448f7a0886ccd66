"""MLflow entry point `sweep`: parse parameters into the config and run it (see `lesion sweep --help`)."""

from lesion.cli import run_entry_point

if __name__ == "__main__":
    raise SystemExit(run_entry_point("sweep"))
