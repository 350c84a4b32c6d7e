# Stage 3: the tidy tables every figure reads (frpo.tables): the fine-tuning runs' forgetting measurements, the RL
# runs' logged metrics and every evaluation, one table each per track.


rule collect_tracking:
    input:
        unpack(tracking_inputs),
    output:
        f"{RESULTS}/{{track}}/tables/tracking.csv",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/{{track}}/collect_tracking.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo collect tracking --track {wildcards.track} --out {output} {params.pairs} > {log} 2>&1"


rule collect_rl_metrics:
    input:
        unpack(rl_metrics_inputs),
    output:
        f"{RESULTS}/{{track}}/tables/rl_metrics.csv",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/{{track}}/collect_rl_metrics.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo collect rl-metrics --track {wildcards.track} --out {output} {params.pairs} > {log} 2>&1"


rule collect_evals:
    input:
        unpack(eval_inputs),
    output:
        f"{RESULTS}/{{track}}/tables/evals.csv",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/{{track}}/collect_evals.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo collect evals --track {wildcards.track} --out {output} {params.pairs} > {log} 2>&1"
