# Stage 2: downstream fine-tuning of every RL model over the track's sweep, one run per fine-tuning seed, with
# forgetting tracking (per-token KL and the track's probes) at step 0 and every finetune.track.every_steps steps.


rule finetune:
    input:
        model=f"{RESULTS}/{{track}}/models/{{run}}/seed{{seed}}",
        judge=classifier_input,
        data=finetune_data,
    output:
        model=directory(f"{RESULTS}/{{track}}/ft/{{run}}/seed{{seed}}/{{setting}}/seed{{ft_seed}}/model"),
        tracking=f"{RESULTS}/{{track}}/ft/{{run}}/seed{{seed}}/{{setting}}/seed{{ft_seed}}/tracking.csv",
    params:
        spec=lambda w: spec_json(finetune_spec(V(w), w.setting, int(w.ft_seed), classifier(w.track))),
        out=lambda w, output: parent(output.tracking),
        ckpt=lambda w: f"{CKPT}/{w.track}/ft/{w.run}/seed{w.seed}/{w.setting}/seed{w.ft_seed}",
        launch=launcher("finetune"),
    log:
        f"{LOGS}/{{track}}/finetune/{{run}}/seed{{seed}}/{{setting}}/seed{{ft_seed}}.log",
    retries: 1
    threads: 2
    resources:
        **job_resources("finetune"),
    conda:
        ENV
    shell:
        "{params.launch}frpo sft --spec {params.spec:q} --model {input.model} --out {params.out} --ckpt {params.ckpt} > {log} 2>&1"
