# Stage 4: evaluations. One rule per benchmark, `eval_<bench>` (frpo.evals.BENCHMARKS), each evaluating any model:
# π_ref (eval/ref/<bench>.json), every RL model (eval/rl/<run>/<bench>.json) and every fine-tuned model
# (eval/ft/<run>/<setting>/<bench>.json). The SLURM profile sizes each benchmark's jobs separately.
from frpo.evals import BENCHMARKS

EVAL_SPEC = spec_json(eval_spec(config, classifier()))  # the same for every benchmark

for _bench in BENCHMARKS:

    rule:
        name:
            f"eval_{_bench}"
        input:
            model=eval_model,
            judge=classifier_input,
        output:
            f"{RESULTS}/eval/{{target}}/{_bench}.json",
        params:
            bench=_bench,
            spec=EVAL_SPEC,
        log:
            f"{LOGS}/eval/{{target}}/{_bench}.log",
        threads: 2
        resources:
            gpu=1 if config["device"] == "cuda" else 0,
            mem_mb=16000,
            runtime=60,
        conda:
            ENV
        shell:
            "frpo evaluate --bench {params.bench} --spec {params.spec:q} --model {input.model} --out {output} "
            "> {log} 2>&1"
