"""MLflow entry point `report`: parse parameters into the config and run it (see `lesion report --help`)."""

from lesion.cli import run_entry_point

if __name__ == "__main__":
    raise SystemExit(run_entry_point("report"))
