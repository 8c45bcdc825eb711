"""A fault-injection hook for the kill tests: SIGKILL this process at a named moment.

`KERAS_MM_FAULT="NAME:N"` kills the process the N-th time (1-based) it reaches the point
NAME; `"NAME:N:half"` first truncates the file being written to half its size, as a kill
in the middle of the write would leave it. The points: "checkpoint" and
"checkpoint_record" (inside a checkpoint's weights and record writes, before the rename),
"final" (inside the write of a final `.keras` artifact, before the rename), "cleanup"
(after the artifacts, before the checkpoints are removed) and "step" (after a training
step, before its checkpoint). Unset, it costs a dict lookup.
"""

import os
import signal

ENV = "KERAS_MM_FAULT"
_counts = {}


def maybe_kill(name, path=None):
    """Kill the process here if `KERAS_MM_FAULT` asks for this occurrence of `name`."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(parts[1]):
        return
    if len(parts) > 2 and parts[2] == "half" and path is not None and os.path.exists(path):
        with open(path, "rb+") as file:
            file.truncate(os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
