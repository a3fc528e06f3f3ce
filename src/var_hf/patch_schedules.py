"""VAR's patch schedules (token-map sides, coarse to fine) and the one parser of their written forms.

This module imports only the standard library, so command lines can parse a schedule before anything heavy loads;
`configuration_vqvae` re-exports the released schedules.

```py
>>> from var_hf.patch_schedules import parse_patch_nums
>>> parse_patch_nums("1_2_3_4_6_8")  # the reference's spelling
[1, 2, 3, 4, 6, 8]
>>> parse_patch_nums("256") == list(PATCH_NUMS_256)
True

```
"""

import re
from typing import Any, List

# The released schedules: 256x256 images (16x16 tokens at the last scale) and 512x512 (32x32).
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
NAMED_PATCH_SCHEDULES = {"256": PATCH_NUMS_256, "512": PATCH_NUMS_512}


def parse_int_list(value: Any, name: str = "value") -> List[int]:
    """`"1,2,3"`, `"1_2_3"`, `"1 2 3"` or `[1, 2, 3]` -> `[1, 2, 3]`. Nested lists, as several command-line words give
    them, are flattened. Raises `ValueError` naming `name` for anything that is not integers."""
    if isinstance(value, str):
        words = [word for word in re.split(r"[,_\s]+", value.strip()) if word]
        if not all(re.fullmatch(r"[+-]?\d+", word) for word in words):
            raise ValueError(f"{name} must be integers separated by commas or underscores (e.g. 1,2,4), got {value!r}.")
        return [int(word) for word in words]
    out: List[int] = []
    for item in value:
        if isinstance(item, (str, list, tuple)):
            out.extend(parse_int_list(item, name))
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        else:
            raise ValueError(f"{name} must be integers, got {item!r} in {value!r}.")
    return out


def parse_patch_nums(value: Any, name: str = "patch_nums") -> List[int]:
    """A patch schedule as written on a command line: `"256"` / `"512"` (the released schedules), `"1,2,4"`,
    `"1_2_4"` (the reference's spelling), `"1 2 4"`, or a list. Checking the schedule itself (increasing, >= 1) is the
    configuration's job."""
    if isinstance(value, str) and value.strip() in NAMED_PATCH_SCHEDULES:
        return list(NAMED_PATCH_SCHEDULES[value.strip()])
    try:
        return parse_int_list(value, name)
    except ValueError:
        raise ValueError(
            f"{name} must be integers separated by commas or underscores (e.g. 1,2,3,4,5,6,8,10,13,16), or 256 / 512 "
            f"for the released schedules, got {value!r}."
        ) from None


__all__ = ["NAMED_PATCH_SCHEDULES", "PATCH_NUMS_256", "PATCH_NUMS_512", "parse_int_list", "parse_patch_nums"]
