# frpo-repro: RL training (GRPO, FRPO) -> LoRA merge -> downstream fine-tuning with forgetting tracking ->
# evaluations -> figures. The default config is the CPU demo; see README.md and config/README.md.
from snakemake.utils import min_version

min_version("9.0")


# The built-in default (the CPU demo) applies only when no --configfile is given: a config named on the command
# line is complete on its own and is never merged over the demo's (frpo.config checks it against the schema).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_outputs,
