#!/usr/bin/env bash

#PBS -N survey-proc
#PBS -l select=1:ncpus=8:mem=32GB
#PBS -l walltime=02:00:00

PYTHON -m distributed.cli.dask_worker tcp://<insert-scheduler-address-here>:8786 --name dummy-name --nthreads 2 --memory-limit 8.00GiB --nworkers 4 --nanny --death-timeout 120
