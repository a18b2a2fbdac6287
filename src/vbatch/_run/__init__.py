"""Running a job, in named phases: **prepare** (the output's lock, its writability, the resume
decision: nothing launched yet), **plan** (on the first rows, the servers start in the
background), **scan** (one pass over the input while they start: validation, ids, digest,
sizing), **re-plan** (only if the scan says so), **send**. ``session.py`` runs them in that
order; ``scan.py``, ``servers.py`` (plan, re-plan and the servers' lifetime) and ``send.py``
hold each phase's work."""
