"""The error type for refused input: an option or a path that cannot work, found before training starts.

Its message is one line that names the option (`model.width=130 is not divisible by model.n_head=4`), so the
command line prints it instead of a traceback and a sweep records the job as failed and goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ConfigError(ValueError):
    """A refused option or path; the message names it. A ValueError, so existing `except ValueError` still holds."""


class ConfigPathError(ConfigError, FileNotFoundError):
    """A refused path (a corpus, a resume= target): still a FileNotFoundError for callers that catch that."""


class ConfigPackageError(ConfigError, ImportError):
    """An option whose package is missing (logger=tensorboard, optim=adam8bit): still an ImportError."""


# What the project's checks raise on bad input; before training starts, each of them means refused input.
INPUT_ERRORS = (ValueError, FileNotFoundError, ImportError)


def as_config_error(exc: BaseException) -> ConfigError:
    """The same message as a ConfigError, keeping the original kind (FileNotFoundError, ImportError) too."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ConfigPathError(str(exc))
    if isinstance(exc, ImportError):
        return ConfigPackageError(str(exc))
    return ConfigError(str(exc))


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
