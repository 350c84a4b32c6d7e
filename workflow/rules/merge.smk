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
        mem_mb=16000,
        runtime=30,
    conda:
        ENV
    shell:
        "frpo merge --base {input.base} --adapter {input.adapter} --out {output} > {log} 2>&1"
