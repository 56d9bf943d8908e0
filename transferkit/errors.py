"""Errors raised by transferkit.

Every error a user can trigger with bad input is a subclass of :class:`TransferkitError`, names what was
wrong and says what to do. Each also subclasses the matching built-in (``ValueError``, ``KeyError``,
``FileNotFoundError``) so existing ``except`` clauses keep working.
"""


class TransferkitError(Exception):
    """Base class of every transferkit error."""


class UnknownBackboneError(TransferkitError, KeyError):
    """A backbone spec names a source or architecture that transferkit cannot build."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackboneFileNotFoundError(TransferkitError, FileNotFoundError):
    """A backbone spec points at a file or directory that does not exist."""


class WeightsError(TransferkitError, ValueError):
    """Weights cannot be obtained or do not fit the architecture."""


class InputError(TransferkitError, ValueError):
    """Raw inputs given to ``preprocess``/``predict`` are not usable (empty text, wrong image shape...)."""


class DataError(TransferkitError, ValueError):
    """A dataset is empty, unreadable or its labels do not fit the head."""


class CheckpointError(TransferkitError, ValueError):
    """A saved model directory is missing files or was written by something else."""


class TooFewToSplitError(DataError):
    """A labelled set too small to hold out validation data without leaving a class (or the training part) empty."""


class LabelError(DataError):
    """Labels are missing, empty or do not follow the label rule (the message names the rows)."""


class ModalityError(InputError):
    """Inputs of one modality were given to a backbone of another (texts to an image network, images or
    image paths to a text network)."""


class ImageError(InputError):
    """An image file cannot be decoded, is too large to be safe to decode (a decompression bomb), or has
    an unsupported pixel format; the message names the file."""


class ConfigError(TransferkitError, ValueError):
    """A setting has a value transferkit does not know (a strategy name, a precision...); the message
    lists the valid ones."""


class AdapterError(ConfigError):
    """A PEFT adapter cannot be added, switched, merged or loaded as asked (an unknown method or target module,
    a name in use); the message lists what is valid."""


class BaseMismatchError(CheckpointError):
    """A saved adapter was trained on another base backbone than the one it is being put on; the message names
    both."""


class OptionError(TransferkitError, TypeError):
    """A keyword option is not accepted by the backbone source, head or command; the message lists the
    valid ones."""


class FileFormatError(TransferkitError, ValueError):
    """A file is truncated, junk, or in another format than the one asked for (a GloVe file given as
    ``word2vec:``, a non-safetensors ``model.safetensors``); the message says which source or tool fits."""


class UnsafeWeightsError(WeightsError):
    """A weights file could only be read by unpickling arbitrary objects, which transferkit never does."""


class TokenizerError(CheckpointError):
    """A tokenizer is missing its files or does not fit the model's embedding matrix."""


class OfflineError(TransferkitError, FileNotFoundError):
    """Offline mode is on (``HF_HUB_OFFLINE``/``TRANSFERKIT_OFFLINE``) and what was asked for is not cached
    locally; the message says how to get it."""


class OutputError(TransferkitError, OSError):
    """A path cannot be written to as a model or run directory (``.``, a file, a directory the library
    did not write); nothing was changed there."""


class OutputExistsError(OutputError, FileExistsError):
    """The output path holds something that is not a transferkit model; choose another path, or pass
    ``overwrite=True`` (CLI ``--overwrite``) to replace it."""


class OutputLockedError(OutputError, BlockingIOError):
    """Another process is writing to the same output path right now (it holds the lock)."""
