#!/usr/bin/env bash

#SBATCH -J survey-proc
#SBATCH -n 1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH -t 02:00:00
#SBATCH --gres=gpu:2

PYTHON -m dask cuda worker tcp://<insert-scheduler-address-here>:8786 --name dummy-name --nthreads 4 --memory-limit 16.00GiB --death-timeout 120 --resources GPU=1
