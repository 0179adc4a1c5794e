"""Config keys that name an environment variable (``username_env``, ``password_env``): the variable
must be set when the configuration is loaded, so a missing secret is a configuration error, not a
connection failure later. Dependency-free apart from pydantic.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator


def require_set(name: str) -> str:
    """``name`` if the environment variable ``name`` is set (even to ""), else ValueError."""
    if name not in os.environ:
        raise ValueError(f"environment variable {name!r} is not set; export it before starting")
    return name


EnvVarName = Annotated[str, AfterValidator(require_set)]
"""A config value naming an environment variable that must be set (:func:`require_set`)."""
