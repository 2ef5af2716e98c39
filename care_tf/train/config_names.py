"""The experiment configs shipped with care_tf, found by name.

The YAML files live once, in `configs/` at the top of the repository. A wheel
carries them as package data in `care_tf/configs/` (setup.py maps the one folder
onto the other), so an installed care_tf and a checkout resolve the same names:

    resolve_config("quickstart")               # -> .../configs/quickstart.yaml
    resolve_config("configs/quickstart.yaml")  # a file there if it exists, else shipped
    list_configs()                             # ["byol_r101_100ep", ..., "quickstart", ...]

No TensorFlow here: command lines list and resolve configs before loading it.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Installed from a wheel: care_tf/configs/; a checkout (or editable install): configs/.
_CANDIDATES = (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs")
SUFFIX = ".yaml"


def config_dir() -> Path | None:
    """The folder of the shipped configs, or None when neither location holds one."""
    for candidate in _CANDIDATES:
        if (candidate / f"quickstart{SUFFIX}").is_file():
            return candidate
    return None


def list_configs() -> list[str]:
    """Names of the shipped experiment configs (`quickstart`, `care_r50_100ep`, ...), sorted.

    Each name is accepted wherever a config path is: `care_tf.build_experiment(name)`,
    `python -m care_tf.train --config NAME`. Files under `base/` are starting points
    for other configs (`base: base/paper.yaml`), not experiments, and are not listed.
    """
    folder = config_dir()
    if folder is None:
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}") if p.is_file())


def resolve_config(name_or_path: str | os.PathLike) -> str:
    """The YAML file a config argument means.

    An existing file is taken as it is. Otherwise the argument is looked up among the
    shipped configs, with or without `.yaml` and a leading `configs/` (so the paths of
    the docs, `configs/quickstart.yaml`, work outside a checkout too). Anything else is
    returned unchanged, for the loader to report as missing.

    Args:
        name_or_path: str or PathLike. A file path or a shipped config's name.

    Returns:
        str. A path (the argument itself when no shipped config matches).
    """
    text = os.fspath(name_or_path)
    if os.path.exists(text):
        return text
    folder = config_dir()
    if folder is None:
        return text
    relative = text.replace(os.sep, "/")
    relative = relative.removeprefix("./").removeprefix("configs/")
    if not relative.endswith(SUFFIX):
        relative += SUFFIX
    candidate = folder / relative
    if ".." not in Path(relative).parts and candidate.is_file():
        return str(candidate)
    return text


def describe_missing() -> str:
    """The sentence that ends a "config not found" error: what names there are."""
    names = list_configs()
    if not names:
        return "Give the path of a YAML file."
    return (
        "Give the path of a YAML file or the name of a shipped config "
        f"({', '.join(n for n in names if not n.startswith(('care_r', 'byol_r')))}, "
        "care_r50_100ep, ...; `python -m care_tf.train --list_configs` lists them all)."
    )


__all__ = ["config_dir", "describe_missing", "list_configs", "resolve_config"]
