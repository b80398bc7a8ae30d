"""Errors whose one-line message says everything, so the command line prints `error: MESSAGE` and no traceback.

- `ConfigError`: refused input, an option or a path that cannot work, found before training starts; the message
  names the option (`model.width=130 is not divisible by model.n_head=4`). A sweep records the job as failed and
  goes on.
- `RunInterrupted`: Ctrl-C stopped a run before its step could finish (a second Ctrl-C, or one before training
  started); a KeyboardInterrupt, so a sweep stops too.
- `CheckpointWriteError`: a checkpoint could not be written (a full disk, a vanished directory); the message names
  the file, and the previous checkpoint is kept, so `resume=auto` continues from it once the cause is fixed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class OneLineError(Exception):
    """An error whose message is the whole story: printed as one line, without a traceback."""


class ConfigError(ValueError, OneLineError):
    """A refused option or path; the message names it. A ValueError, so existing `except ValueError` still holds."""


class ConfigPathError(ConfigError, FileNotFoundError):
    """A refused path (a corpus, a resume= target): still a FileNotFoundError for callers that catch that."""


class ConfigPackageError(ConfigError, ImportError):
    """An option whose package is missing (logger=tensorboard, optim=adam8bit): still an ImportError."""


class CheckpointWriteError(OSError, OneLineError):
    """A checkpoint could not be written; the previous one is intact."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at once (before training, or a second Ctrl-C): the message says what is kept."""


# What the project's checks raise on bad input; before training starts, each of them means refused input.
INPUT_ERRORS = (ValueError, FileNotFoundError, ImportError)


def one_line(message: str) -> str:
    """A message on one line: OmegaConf's errors put the key on a line of its own (`full_key: data.seed`)."""
    return "; ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())


def as_config_error(exc: BaseException) -> ConfigError:
    """The same message, on one line, as a ConfigError, keeping the original kind (FileNotFoundError,
    ImportError) too."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ConfigPathError(one_line(exc))
    if isinstance(exc, ImportError):
        return ConfigPackageError(one_line(exc))
    return ConfigError(one_line(exc))


@contextlib.contextmanager
def refusing_input() -> Iterator[None]:
    """Inside this block a ValueError, FileNotFoundError or ImportError is refused input: it leaves as a
    ConfigError (chained to the original, for the traceback)."""
    try:
        yield
    except ConfigError:
        raise
    except INPUT_ERRORS as exc:
        raise as_config_error(exc) from exc
