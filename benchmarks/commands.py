"""What the benchmark scripts share: `pyro-vae` run as a user runs it, and the CSV files it writes."""

import csv
import subprocess
import sys


def pyro_vae(*argv):
    """``pyro-vae *argv`` in a new process; its stdout, or the script stops with its stderr."""
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pyro-vae {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def read_csv(path):
    """The rows of a CSV file the package wrote (``metrics.csv``, ``log_px.csv``); none if it is absent."""
    return list(csv.DictReader(path.open())) if path.exists() else []
