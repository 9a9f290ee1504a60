"""What the benchmark scripts share: commands run as a user runs them, timed, and the CSV files `pyro-vae` writes."""

import csv
import subprocess
import sys
import time


def run(command, env=None):
    """``command`` in a new process: (its wall seconds, its ``CompletedProcess``), or the script
    stops with its stderr."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done


def pyro_vae(*argv):
    """``pyro-vae *argv`` in a new process; its stdout, or the script stops with its stderr."""
    return run([sys.executable, "-m", "pyro_vae", *argv])[1].stdout


def read_csv(path):
    """The rows of a CSV file the package wrote (``metrics.csv``, ``log_px.csv``); none if it is absent."""
    return list(csv.DictReader(path.open())) if path.exists() else []
