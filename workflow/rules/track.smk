# Stage 3: forgetting tracking. The fine-tuning rule measures it while it trains; this rule gathers every run's
# measurements into one tidy table (run, setting, step, kl_per_token, safety_reward, helpfulness_reward, ...).


rule collect_tracking:
    input:
        unpack(tracking_inputs),
    output:
        f"{RESULTS}/tracking.csv",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/collect_tracking.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo collect-tracking --out {output} {params.pairs} > {log} 2>&1"
