"""``survey-proc cluster``: helpers for batch clusters (the job script ``--cluster slurm|pbs`` submits)."""

from __future__ import annotations

import argparse
import sys


def add_cluster(sub) -> None:
    c = sub.add_parser("cluster", help="cluster helpers: print the batch job script of --cluster slurm|pbs")
    c.add_argument("action", choices=["job-script"])
    c.add_argument("--cluster", required=True, choices=["slurm", "pbs"])
    c.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    """The job script on stdout, whole lines; then, on stderr and on a line of its own, what is filled
    in at submission (stdout is flushed first, so the note follows the script where both are shown)."""
    from survey_proc.cluster import PLACEHOLDER_ADDRESS, job_script

    if args.action == "job-script":
        script = job_script(args.cluster)
        sys.stdout.write(script if script.endswith("\n") else script + "\n")
        sys.stdout.flush()
        print(
            f"# (the scheduler address {PLACEHOLDER_ADDRESS} and the worker name are filled in when "
            f"`survey-proc run --cluster {args.cluster}` submits the jobs)",
            file=sys.stderr,
        )
    return 0
