"""The shared vocabulary: one definition each of the names every layer agrees on.

Torch-free and import-free, so that ``op_zoo``, the solver front end and the CLI can all
use it without paying for each other's imports.
"""

TEACHER_OP = "teacher"  # the candidate that keeps the teacher's own block (score 0 by definition)
LATENCY = "latency_ms"  # the primary latency column: what ``lana solve`` adds up
DEFAULT_SOLVER = "auto"  # exact DP for a single latency limit, a MIP otherwise
