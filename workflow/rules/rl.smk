# Stage 1: base model, demo judge, warm-up SFT (π_ref), and RL training (GRPO, FRPO at each λ, FRPO at λ*).


rule prepare_base_model:
    output:
        directory(f"{RESULTS}/models/base"),
    params:
        spec=spec_json(prepare_spec(config)),
    log:
        f"{LOGS}/prepare_base_model.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "frpo prepare-model --spec {params.spec:q} --out {output} > {log} 2>&1"


rule fit_refusal_judge:
    output:
        f"{RESULTS}/judges/refusal_classifier.json",
    params:
        labelled=config["data"]["judge_labelled"],
    log:
        f"{LOGS}/fit_refusal_judge.log",
    threads: 2
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "frpo fit-judge --labelled {params.labelled:q} --out {output} > {log} 2>&1"


rule warmup_sft:
    input:
        model=f"{RESULTS}/models/base",
    output:
        model=directory(f"{RESULTS}/warmup/model"),
    params:
        spec=lambda w: spec_json(warmup_spec(config)),  # lazily: a disabled warm-up may have no train section
        out=lambda w, output: parent(output.model),
        ckpt=f"{CKPT}/warmup",
    log:
        f"{LOGS}/warmup_sft.log",
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "frpo sft --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"


rule rl_train:
    input:
        model=ref_model(),
        judge=classifier_input,
    output:
        metrics=f"{RESULTS}/rl/{{run}}/metrics.jsonl",
        adapter=directory(f"{RESULTS}/rl/{{run}}/adapter"),
    params:
        spec=lambda w: spec_json(rl_spec(config, w.run, classifier())),
        out=lambda w, output: parent(output.metrics),
        ckpt=lambda w: f"{CKPT}/rl/{w.run}",
    log:
        f"{LOGS}/rl_train/{{run}}.log",
    retries: 1
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=32000,
        runtime=lambda w, attempt: 720 * attempt,
    conda:
        ENV
    shell:
        "frpo rl --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"


checkpoint lambda_select:
    input:
        metrics=f"{RESULTS}/rl/grpo/metrics.jsonl",
    output:
        f"{RESULTS}/rl/lambda_star.json",
    params:
        rho=config["rl"].get("lambda_star", {}).get("rho", 0.1),
        last_k=config["rl"].get("lambda_star", {}).get("last_k", 5),
    log:
        f"{LOGS}/lambda_select.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo lambda-select --metrics {input.metrics} --rho {params.rho} --last-k {params.last_k} "
        "--out {output} > {log} 2>&1"
