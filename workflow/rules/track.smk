# Stage 3: the tidy tables every figure reads (frpo.tables): the fine-tuning runs' forgetting measurements, the RL
# runs' logged metrics, every evaluation and the RL models' sampled rewards, one table each per experiment.


rule sample_rewards:  # the forgetting floor's input: floor.samples scored completions per held-out probe prompt
    input:
        model=f"{RESULTS}/{{track}}/models/{{run}}/seed{{seed}}",
        judge=classifier_input,
        data=stage_data,
    output:
        f"{RESULTS}/{{track}}/rl/{{run}}/seed{{seed}}/rewards.jsonl",
    params:
        spec=lambda w: spec_json(samples_spec(V(w), classifier(w.track))),
    log:
        f"{LOGS}/{{track}}/sample_rewards/{{run}}/seed{{seed}}.log",
    threads: LIGHT_THREADS
    resources:
        gpu=on_gpu,
        cpus_per_gpu=lambda w: 8 if on_gpu() else 0,
        mem_mb=lambda w: 64000 if on_gpu() else 4000,
        runtime=lambda w: 120 if on_gpu() else 30,
    conda:
        ENV
    shell:
        "frpo sample-rewards --spec {params.spec:q} --model {input.model} --out {output} > {log} 2>&1"


rule collect_rewards:
    input:
        unpack(rewards_inputs),
    output:
        f"{RESULTS}/{{track}}/tables/rewards.csv",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/{{track}}/collect_rewards.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo collect rewards --track {wildcards.track} --out {output} {params.pairs} > {log} 2>&1"


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
