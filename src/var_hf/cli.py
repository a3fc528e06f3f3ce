"""Former home of the `var-hf` entry point, now `var_hf.commands.var_hf_cli` (the console script points there).

Only `main` is re-exported, for callers not yet moved; this module goes once none remains.
"""

from var_hf.commands.var_hf_cli import main

__all__ = ["main"]
