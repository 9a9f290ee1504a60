"""The run folder's one writer: the lock ``pyro-vae train`` holds on it for its whole life, and the
switch from the run a folder holds to the run replacing it (``--overwrite``).

The lock is ``flock`` on the folder itself: no lock file to leave behind, and the kernel releases
it when the process ends in any way, so a run killed with SIGKILL resumes without cleanup. A
second writer is refused in one line naming the holder's process (read from ``/proc/locks``).
Readers (``evaluate``, ``generate``, ``encode``, ``explore``) take no lock: every file is replaced
atomically, so they read the last complete checkpoint while a run trains.

A run writes nothing into its folder before its first checkpoint, so a run that fails or is killed
in its first epoch leaves the folder as it was: empty for a new run, the old run whole for an
``--overwrite``. At that first checkpoint the old run's files (:data:`OUTPUTS`: what ``train``,
``evaluate`` and ``explore`` write under their own names; files a user named, such as
``generate --out run/sevens.png``, stay) are moved aside into :data:`ASIDE`, the new run's files
written with ``checkpoint.pt`` last, and the old files deleted.
A kill during that switch is undone by :func:`recover` at the next command on the folder: with no
new checkpoint the old run is moved back, with one the old files are deleted.
"""

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from .errors import UserError

ASIDE = ".replaced-run"  # the old run, whole, until the new run's first checkpoint is written
PARTIAL = ".replaced-run.partial"  # the old run while it is being moved aside
CHECKPOINT = "checkpoint.pt"
# the files the package writes into a run folder under names of its own
OUTPUTS = ("config.toml", CHECKPOINT, "metrics.csv", "samples.png", "reconstructions.png", "loss.png", "log_px.csv",
           "diagnostics.png", "latent_map.png", "interpolations.png", "traversals.png", "manifold.png")


def holder(folder):
    """The pid holding the ``flock`` on ``folder``, where ``/proc/locks`` says (Linux), else None."""
    info = os.stat(folder)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and device in fields:
                    return int(fields[fields.index(device) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _created_folders(out):
    """Make ``out`` and its missing parents; returns the ones made, innermost first."""
    made = []
    for folder in [out, *out.parents]:
        if folder.exists():
            break
        made.append(folder)
    for folder in reversed(made):
        try:
            folder.mkdir()
        except NotADirectoryError:
            raise UserError(f"--out {out} lies inside a file, not a folder; pick a folder for the run") from None
    return made


@contextlib.contextmanager
def exclusive(out):
    """Hold the writer's lock on run folder ``out`` (made if missing) for the ``with`` block, after
    undoing a switch that a kill interrupted. Folders made here are removed again if the block
    wrote nothing into them."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pick a folder for the run")
    made = _created_folders(out)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(out)
            who = f"process {pid}" if pid is not None else "another process"
            raise UserError(f"{out} is being written by {who} (a pyro-vae train); wait for it to end, or choose another --out") from None
        recover(out)
        yield out
    finally:
        os.close(fd)  # releases the lock
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()


def recover(out):
    """Undo a switch that was interrupted (see the module docstring). Call with the lock held."""
    partial, aside = out / PARTIAL, out / ASIDE
    if partial.is_dir():  # nothing new was written yet: put the old run back
        _move_entries(partial, out)
        partial.rmdir()
    if aside.is_dir():
        if (out / CHECKPOINT).exists():  # the new run's first checkpoint is written: it owns the folder
            shutil.rmtree(aside)
        else:
            for entry in out.iterdir():
                if entry.name in OUTPUTS:  # what the new run wrote before it was stopped
                    _remove(entry)
            _move_entries(aside, out)
            aside.rmdir()


def recover_if_idle(out):
    """For readers: undo an interrupted switch where no writer holds the folder."""
    out = Path(out)
    if not ((out / PARTIAL).is_dir() or (out / ASIDE).is_dir()):
        return
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a writer is switching right now; it finishes the switch itself
    else:
        recover(out)
    finally:
        os.close(fd)


def switch(out, write_new_run):
    """Replace the run in ``out`` (if any) by the one ``write_new_run()`` writes, whose last write
    must be its checkpoint. Call with the lock held, at the new run's first checkpoint."""
    out = Path(out)
    old = [entry for entry in out.iterdir() if entry.name in OUTPUTS]
    if not old:
        write_new_run()
        return
    partial = out / PARTIAL
    partial.mkdir()
    for entry in old:
        entry.rename(partial / entry.name)
    partial.rename(out / ASIDE)
    try:
        write_new_run()
    except BaseException:
        recover(out)  # no new checkpoint: the old run goes back
        raise
    shutil.rmtree(out / ASIDE)


def _move_entries(source, target):
    for entry in source.iterdir():
        entry.rename(target / entry.name)


def _remove(entry):
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
