# LoRA merge: RL adapters -> full models, which fine-tuning and evaluation read.


rule merge_lora:
    input:
        base=ref_model(),
        adapter=f"{RESULTS}/rl/{{run}}/adapter",
    output:
        directory(f"{RESULTS}/models/{{run}}"),
    log:
        f"{LOGS}/merge_lora/{{run}}.log",
    threads: 2
    resources:
        gpu=0,
        # twice the base model's weight files plus 2 GB (frpo.models.merge_mem_mb), evaluated once the base exists
        mem_mb=lambda wildcards, input: merge_mem_mb(input.base),
        runtime=30,
    conda:
        ENV
    shell:
        "frpo merge --base {input.base} --adapter {input.adapter} --out {output} > {log} 2>&1"
