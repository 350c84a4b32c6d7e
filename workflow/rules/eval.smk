# Stage 4: evaluations. One rule per benchmark, `eval_<bench>` (frpo.evals.BENCHMARKS), each evaluating any model
# of a track: π_ref (eval/ref/<bench>.json), every RL model (eval/rl/<run>/seed<s>/<bench>.json) and every
# fine-tuned model (eval/ft/<run>/seed<s>/<setting>/seed<f>/<bench>.json). The SLURM profile sizes each
# benchmark's jobs separately.
from frpo.evals import BENCHMARKS

EVAL_SPECS = {t: spec_json(eval_spec(VIEWS[t], classifier(t))) for t in TRACKS}  # one per track

for _bench in BENCHMARKS:

    rule:
        name:
            f"eval_{_bench}"
        input:
            model=eval_model,
            judge=classifier_input,
        output:
            f"{RESULTS}/{{track}}/eval/{{target}}/{_bench}.json",
        params:
            bench=_bench,
            spec=lambda w: EVAL_SPECS[w.track],
        log:
            f"{LOGS}/{{track}}/eval/{{target}}/{_bench}.log",
        threads: 2
        resources:
            gpu=on_gpu,
            mem_mb=16000,
            runtime=60,
        conda:
            ENV
        shell:
            "frpo evaluate --bench {params.bench} --spec {params.spec:q} --model {input.model} --out {output} "
            "> {log} 2>&1"
