"""The model zoo: one catalogue, one cache and one offline switch over word vectors, language models and
vision weights.

>>> from transferkit import zoo
>>> zoo.list_models("glove/*")                       # doctest: +SKIP
>>> path = zoo.download("glove/wiki-gigaword-6b.100d", trust_unverified=True)  # doctest: +SKIP
>>> spec, options = zoo.backbone_spec("bert/base-uncased.google")              # doctest: +SKIP

Files go to ``$TRANSFERKIT_HOME/zoo`` (default ``~/.cache/transferkit/zoo``); ``TRANSFERKIT_OFFLINE=1`` (or
``HF_HUB_OFFLINE=1``) keeps every call off the network. Importing this package imports no model code and
no ``huggingface_hub``; see ``docs/zoo.md``.
"""

from transferkit.zoo.api import VerifyReport, backbone_spec, download, is_installed, remove, verify
from transferkit.zoo.catalogue import ZooEntry, ZooFile, HubRepo, add_catalogue, info, list_models
from transferkit.zoo.errors import (CatalogueError, ChecksumError, DownloadError, OfflineError, PublishError,
                                    UnknownModelError, UnsafeArchiveError, UnverifiedModelError, ZooError)
from transferkit.zoo.publish import publish
from transferkit.zoo.settings import DownloadPolicy

__all__ = [
    "list_models", "info", "download", "verify", "remove", "publish", "backbone_spec", "add_catalogue",
    "is_installed", "ZooEntry", "ZooFile", "HubRepo", "VerifyReport", "DownloadPolicy",
    "ZooError", "CatalogueError", "UnknownModelError", "OfflineError", "UnverifiedModelError",
    "ChecksumError", "DownloadError", "UnsafeArchiveError", "PublishError",
]
