"""What both var_hf configurations share: strict loading and field checks with messages that name the field.

A configuration is checked when it is built (by hand, from `from_pretrained`, `from_dict` or with its defaults, as
transformers does internally) and again when it is saved, so a hand-edited `config.json` with a missing folder, another
model's type or a wrongly typed field fails at load time with a message naming the file and the field, instead of
deep inside a layer constructor or, worse, loading a model that is silently not the one on disk.
"""

import inspect
import math
import numbers
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from transformers import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

# model_type -> (class, folder of a saved VARPipeline that holds it): for hints when a folder of the other kind is given.
VAR_HF_MODEL_TYPES = {
    "var_transformer": ("VARTransformer", "transformer"),
    "var_multiscale_vqvae": ("MultiScaleVQVAE", "vqvae"),
}


class ConfigFieldError(ValueError):
    """A configuration field has the wrong type or an impossible value."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """`value` as an int (a bool or a float is refused), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigFieldError(f"{name} must be an integer, got {_describe(value)}.")
    if minimum is not None and value < minimum:
        raise ConfigFieldError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_float(
    name: str, value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None,
    exclusive_minimum: bool = False, exclusive_maximum: bool = False,
) -> float:
    """`value` as a finite float (an int is fine, a bool or a string is not) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigFieldError(f"{name} must be a finite number, got {_describe(value)}.")
    below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    above = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
    if below or above:
        low = "" if minimum is None else ("(" if exclusive_minimum else "[") + f"{minimum}, "
        high = "" if maximum is None else f"{maximum}" + (")" if exclusive_maximum else "]")
        bounds = f"{low or '(-inf, '}{high or 'inf)'}"
        raise ConfigFieldError(f"{name} must lie in {bounds}, got {value}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigFieldError(f"{name} must be true or false, got {_describe(value)}.")
    return value


def check_int_list(name: str, value: Any, minimum: int = 1, min_length: int = 1) -> List[int]:
    """A list/tuple of ints, each at least `minimum`, with at least `min_length` entries."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigFieldError(f"{name} must be a list of integers, got {_describe(value)}.")
    items = [check_int(f"{name}[{i}]", item, minimum) for i, item in enumerate(value)]
    if len(items) < min_length:
        raise ConfigFieldError(f"{name} must hold at least {min_length} entries, got {list(value)}.")
    return items


def check_patch_nums(value: Any, name: str = "patch_nums") -> List[int]:
    """Token-map sides, coarse to fine: positive, strictly increasing, at least two."""
    sides = check_int_list(name, value, minimum=1)
    if len(sides) < 2 or any(b <= a for a, b in zip(sides, sides[1:])):
        raise ConfigFieldError(
            f"{name} must hold at least two strictly increasing sides, got {sides}; "
            "use e.g. (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)."
        )
    return sides


class VARHFConfig(PretrainedConfig):
    """Base of var_hf's configurations: `check_fields` runs when the configuration is built and when it is saved, and
    `from_pretrained` refuses a folder without `config.json` or with another model's configuration."""

    model_type = ""

    def check_fields(self):
        """Raise `ConfigFieldError` naming the first field with a wrong type or value. Subclasses fill this in."""

    def validate(self):
        # transformers calls `validate` before writing config.json: catch fields edited after construction too.
        super().validate()
        self.check_fields()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        subfolder = kwargs.get("subfolder") or ""
        config_dict, unused = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        where = os.path.join(str(pretrained_model_name_or_path), subfolder) if subfolder else str(pretrained_model_name_or_path)
        if not config_dict:
            # transformers would go on with the default configuration (a random d16 for the transformer).
            raise OSError(
                f"No config.json in {where}: a {cls.__name__[:-len('Config')]} folder holds config.json next to "
                "its weights (save_pretrained writes both). Point at the folder save_pretrained wrote, or pass "
                "`config=` explicitly."
            )
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            hint = ""
            if found in VAR_HF_MODEL_TYPES:
                other_class, folder = VAR_HF_MODEL_TYPES[found]
                hint = (
                    f" It holds a {other_class} (in a saved VARPipeline that is the '{folder}/' folder): load it with "
                    f"{other_class}.from_pretrained"
                )
                own_folder = VAR_HF_MODEL_TYPES.get(cls.model_type, (None, None))[1]
                hint += f", or point at the '{own_folder}/' folder." if own_folder else "."
            raise ValueError(
                f"{where} holds a configuration of model_type {found!r}, not {cls.model_type!r} "
                f"({cls.__name__}).{hint}"
            )
        absent = [name for name in cls.field_names() if name not in config_dict]
        if absent:
            # Not an error: a field added in a later version must not make older folders unloadable.
            logger.warning(
                f"{os.path.join(where, 'config.json')} does not set {', '.join(absent)}: using the default "
                f"{', '.join(repr(inspect.signature(cls.__init__).parameters[n].default) for n in absent)}."
            )
        return config_dict, unused

    @classmethod
    def field_names(cls) -> List[str]:
        """The model-specific fields: the keyword arguments of `__init__`."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ConfigFieldError as error:
            where = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "", "config.json")
            raise ConfigFieldError(f"{where}: {error}") from None


__all__ = [
    "ConfigFieldError",
    "VARHFConfig",
    "VAR_HF_MODEL_TYPES",
    "check_bool",
    "check_float",
    "check_int",
    "check_int_list",
    "check_patch_nums",
]
