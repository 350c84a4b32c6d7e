# Stage 1, per track: base model, data preparation, demo judge, warm-up SFT (π_ref), and RL training (GRPO,
# FRPO at each λ, FRPO at λ*), one run per seed.


rule prepare_base_model:
    output:
        directory(f"{RESULTS}/{{track}}/models/base"),
    params:
        spec=lambda w: spec_json(prepare_spec(V(w))),
    log:
        f"{LOGS}/{{track}}/prepare_base_model.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "frpo prepare-model --spec {params.spec:q} --out {output} > {log} 2>&1"


rule prepare_data:
    output:
        data=f"{RESULTS}/{{track}}/data/{{key}}.jsonl",
        summary=f"{RESULTS}/{{track}}/data/{{key}}.summary.json",
    params:
        spec=lambda w: spec_json(data_spec(V(w), w.key)),
    log:
        f"{LOGS}/{{track}}/prepare_data/{{key}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "frpo prepare-data --spec {params.spec:q} --out {output.data} > {log} 2>&1"


rule fit_refusal_judge:
    output:
        f"{RESULTS}/{{track}}/judges/refusal_classifier.json",
    params:
        labelled=lambda w: V(w)["data"]["judge_labelled"],
    log:
        f"{LOGS}/{{track}}/fit_refusal_judge.log",
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
        model=f"{RESULTS}/{{track}}/models/base",
    output:
        model=directory(f"{RESULTS}/{{track}}/warmup/model"),
    params:
        spec=lambda w: spec_json(warmup_spec(V(w))),
        out=lambda w, output: parent(output.model),
        ckpt=lambda w: f"{CKPT}/{w.track}/warmup",
        launch=launcher("warmup"),
    log:
        f"{LOGS}/{{track}}/warmup_sft.log",
    threads: 2
    resources:
        **job_resources("warmup"),
    conda:
        ENV
    shell:
        "{params.launch}frpo sft --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"


rule rl_train:
    input:
        model=lambda w: ref_model(w.track),
        judge=classifier_input,
        data=stage_data,
    output:
        metrics=f"{RESULTS}/{{track}}/rl/{{run}}/seed{{seed}}/metrics.jsonl",
        adapter=directory(f"{RESULTS}/{{track}}/rl/{{run}}/seed{{seed}}/adapter"),
    params:
        spec=lambda w: spec_json(rl_spec(V(w), w.run, int(w.seed), classifier(w.track))),
        out=lambda w, output: parent(output.metrics),
        ckpt=lambda w: f"{CKPT}/{w.track}/rl/{w.run}/seed{w.seed}",
        launch=launcher("rl"),
    log:
        f"{LOGS}/{{track}}/rl_train/{{run}}/seed{{seed}}.log",
    retries: 1
    threads: 2
    resources:
        **job_resources("rl"),
    conda:
        ENV
    shell:
        "{params.launch}frpo rl --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"


checkpoint lambda_select:
    input:
        metrics=lambda w: [f"{RESULTS}/{w.track}/rl/grpo/seed{s}/metrics.jsonl" for s in rl_seeds(V(w))],
    output:
        f"{RESULTS}/{{track}}/rl/lambda_star.json",
    params:
        rho=lambda w: V(w)["rl"].get("lambda_star", {}).get("rho", 0.1),
        last_k=lambda w: V(w)["rl"].get("lambda_star", {}).get("last_k", 5),
    log:
        f"{LOGS}/{{track}}/lambda_select.log",
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
