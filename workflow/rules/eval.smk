# Stage 4: evaluations. One rule per benchmark, `eval_<bench>` (frpo.evals.BENCHMARKS), each evaluating any model
# of a track: π_ref (eval/ref/<bench>.json), every RL model (eval/rl/<run>/seed<s>/<bench>.json) and every
# fine-tuned model (eval/ft/<run>/seed<s>/<setting>/seed<f>/<bench>.json). Each benchmark's resources come from
# the evaluation registry (frpo.evals.resources): GPUs, CPUs per GPU, memory and runtime; no GPU on a cpu config.
from frpo.evals import BENCHMARKS, resources as bench_resources

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
        threads: LIGHT_THREADS
        resources:
            gpu=bench_resources(_bench)["gpu"] if on_gpu() else 0,
            cpus_per_gpu=bench_resources(_bench)["cpus_per_gpu"] if on_gpu() else 0,
            mem_mb=bench_resources(_bench)["mem_mb"],
            runtime=bench_resources(_bench)["runtime"],
        conda:
            ENV
        shell:
            "frpo evaluate --bench {params.bench} --spec {params.spec:q} --model {input.model} --out {output} "
            "> {log} 2>&1"
