# Stage 4: evaluations of π_ref, of every RL model, and of every fine-tuned model.


rule eval_ref:
    input:
        model=ref_model(),
        judge=classifier_input,
    output:
        f"{RESULTS}/eval/ref/{{bench}}.json",
    params:
        spec=spec_json(eval_spec(config, classifier())),
    log:
        f"{LOGS}/eval/ref/{{bench}}.log",
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=16000,
        runtime=60,
    conda:
        ENV
    shell:
        "frpo evaluate --bench {wildcards.bench} --spec {params.spec:q} --model {input.model} --out {output} "
        "> {log} 2>&1"


rule eval_rl:
    input:
        model=f"{RESULTS}/models/{{run}}",
        judge=classifier_input,
    output:
        f"{RESULTS}/eval/rl/{{run}}/{{bench}}.json",
    params:
        spec=spec_json(eval_spec(config, classifier())),
    log:
        f"{LOGS}/eval/rl/{{run}}/{{bench}}.log",
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=16000,
        runtime=60,
    conda:
        ENV
    shell:
        "frpo evaluate --bench {wildcards.bench} --spec {params.spec:q} --model {input.model} --out {output} "
        "> {log} 2>&1"


rule eval_ft:
    input:
        model=f"{RESULTS}/ft/{{run}}/{{setting}}/model",
        judge=classifier_input,
    output:
        f"{RESULTS}/eval/ft/{{run}}/{{setting}}/{{bench}}.json",
    params:
        spec=spec_json(eval_spec(config, classifier())),
    log:
        f"{LOGS}/eval/ft/{{run}}/{{setting}}/{{bench}}.log",
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=16000,
        runtime=60,
    conda:
        ENV
    shell:
        "frpo evaluate --bench {wildcards.bench} --spec {params.spec:q} --model {input.model} --out {output} "
        "> {log} 2>&1"
