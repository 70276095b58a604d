#!/usr/bin/env bash

#SBATCH -J survey-proc
#SBATCH -n 1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH -t 02:00:00

PYTHON -m distributed.cli.dask_worker tcp://<insert-scheduler-address-here>:8786 --name dummy-name --nthreads 2 --memory-limit 8.00GiB --nworkers 4 --nanny --death-timeout 120
