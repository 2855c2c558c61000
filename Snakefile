# alfred-edge: ALFRED json_feat -> compact store -> train -> quantize -> benchmark -> report.
# Usage: snakemake --cores 4 reports/summary.html   (the dry run: snakemake -n)
from snakemake.utils import min_version

# 9.1.4: the first 9.x whose default rerun triggers (params, input, code) work (snakemake#3491).
min_version("9.1.4")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "reports/summary.html",
