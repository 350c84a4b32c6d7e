# frpo-repro: RL training (GRPO, FRPO) -> LoRA merge -> downstream fine-tuning with forgetting tracking ->
# evaluations -> figures. The default config is the CPU demo; see README.md and config/README.md.
from snakemake.utils import min_version

min_version("9.0")


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
