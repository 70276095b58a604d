#!/usr/bin/env bash

#PBS -N survey-proc
#PBS -l select=1:ncpus=8:ngpus=2:mem=32GB
#PBS -l walltime=02:00:00

PYTHON -m dask cuda worker tcp://<insert-scheduler-address-here>:8786 --name dummy-name --nthreads 4 --memory-limit 16.00GiB --death-timeout 120 --resources GPU=1
