# Stage 2: downstream fine-tuning of every RL model over the configured sweep, with forgetting tracking
# (per-token KL, safety and helpfulness rewards) at step 0 and every finetune.track.every_steps steps.


rule finetune:
    input:
        model=f"{RESULTS}/models/{{run}}",
        judge=classifier_input,
    output:
        model=directory(f"{RESULTS}/ft/{{run}}/{{setting}}/model"),
        tracking=f"{RESULTS}/ft/{{run}}/{{setting}}/tracking.csv",
    params:
        spec=lambda w: spec_json(finetune_spec(config, w.setting, classifier())),
        out=lambda w, output: parent(output.tracking),
        ckpt=lambda w: f"{CKPT}/ft/{w.run}/{w.setting}",
    log:
        f"{LOGS}/finetune/{{run}}/{{setting}}.log",
    retries: 1
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=32000,
        runtime=lambda w, attempt: 720 * attempt,
    conda:
        ENV
    shell:
        "frpo sft --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"
