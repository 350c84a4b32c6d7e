# LoRA merge: RL adapters -> full models, which fine-tuning and evaluation read.


rule merge_lora:
    input:
        base=lambda w: ref_model(w.track),
        adapter=f"{RESULTS}/{{track}}/rl/{{run}}/seed{{seed}}/adapter",
    output:
        directory(f"{RESULTS}/{{track}}/models/{{run}}/seed{{seed}}"),
    log:
        f"{LOGS}/{{track}}/merge_lora/{{run}}/seed{{seed}}.log",
    threads: LIGHT_THREADS
    resources:
        gpu=0,
        # twice the base model's weight files plus 2 GB (frpo.models.merge_mem_mb), evaluated once the base exists
        mem_mb=lambda wildcards, input: merge_mem_mb(input.base),
        runtime=30,
    conda:
        ENV
    shell:
        "frpo merge --base {input.base} --adapter {input.adapter} --out {output} > {log} 2>&1"
