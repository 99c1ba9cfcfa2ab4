"""The launchers' command line (launch/*.py): a bad `--config` override or a bad value is one line
naming it on stderr and exit code 2, never a traceback.

    app.run(main, flags_parser=cli.flags_parser("launch/train.py"))
    ...
    cli.refuse("launch/train.py", "config.train.steps=-1: must be > 0")      # inside main
"""
from __future__ import annotations

import re
import sys

from absl import flags


def refuse(prog: str, msg: str):
    """Print `prog: error: msg` on stderr and exit with code 2 (the usage-error code)."""
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def override_error(argv, e: Exception) -> str:
    """The one-line message for an exception ml_collections raised while applying --config overrides
    (AttributeError / KeyError for an unknown key, perhaps with a "did you mean"; ValueError /
    TypeError for a value of the wrong type)."""
    lines = [x.strip() for x in str(e).replace("\\n", "\n").splitlines() if x.strip()]
    last = lines[-1] if lines else type(e).__name__
    m = re.match(r"""^['"\\]*([A-Za-z0-9_]+)['"\\]*$""", lines[0]) if lines else None
    if isinstance(e, (AttributeError, KeyError)) and m:
        key = m.group(1)
        arg = next((a for a in argv[1:] if re.search(rf"\.{re.escape(key)}(=|$)", a)), "--config")
        hint = " ".join(lines[1:]).strip("'\"")
        return f"{arg.split('=')[0]}: unknown key {key!r}" + (f" ({hint})" if hint else "")
    last = re.sub(r"^\w*Error: ", "", last)
    return last[1:-1] if len(last) > 1 and last[0] == last[-1] and last[0] in "'\"" else last


def flags_parser(prog: str):
    """A flags_parser for absl's app.run: absl's parsing, a bad override refused in one line."""
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except Exception as e:  # noqa: BLE001 -- ml_collections raises several types for bad overrides
            refuse(prog, override_error(argv, e))
    return parse
