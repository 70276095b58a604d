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
    from survey_proc.cluster import PLACEHOLDER_ADDRESS, job_script

    if args.action == "job-script":
        print(job_script(args.cluster), end="")
        print(
            f"# (the scheduler address {PLACEHOLDER_ADDRESS} and the worker name are filled in when "
            f"`survey-proc run --cluster {args.cluster}` submits the jobs)",
            file=sys.stderr,
        )
    return 0
