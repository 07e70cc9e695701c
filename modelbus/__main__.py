"""`python -m modelbus`: the command line, as the `modelbus` script runs it.

Processes start through this module rather than `python -m modelbus.cli`: the ingress's offload pool
spawns Python processes, and a spawned process imports the parent's main module again unless it is a
package's `__main__` (multiprocessing skips those), so each pool process starts without the CLI's
imports (0.3 s of CPU, measured).
"""

from modelbus.cli import app

app(prog_name="modelbus")
