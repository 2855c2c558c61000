#!/usr/bin/env bash
# A stand-in for sbatch/qsub, for tests/test_pipeline_cluster.py: runs Snakemake's
# jobscript in the background on this machine and prints a job id (its process id), as a
# cluster's submit command does. Use as the cluster-generic executor's submit command:
#   --cluster-generic-submit-cmd "bash tests/cluster/submit.sh {rule}"
# (Snakemake appends the jobscript). Each submission is listed in cluster-logs/submitted.txt.
set -euo pipefail
rule=$1
jobscript=$2
mkdir -p cluster-logs
nohup bash "$jobscript" >"cluster-logs/$rule.$$.log" 2>&1 </dev/null &
echo "$! $rule" >>cluster-logs/submitted.txt
echo "$!"
