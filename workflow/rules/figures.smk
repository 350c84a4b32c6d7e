# Stage 5: figures and tables (matplotlib; every one is in the report: snakemake --report report.html).


rule figure_lambda_landscape:
    input:
        tracking=f"{RESULTS}/tracking.csv",
    output:
        png=report(f"{RESULTS}/figures/fig_lambda_landscape.png", caption="../report/fig_lambda_landscape.rst",
                   category="Figures"),
        pdf=f"{RESULTS}/figures/fig_lambda_landscape.pdf",
    log:
        f"{LOGS}/figure_lambda_landscape.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo figure lambda-landscape --tracking {input.tracking} --out {output.png} > {log} 2>&1"


rule figure_rl_curves:
    input:
        unpack(rl_metrics_inputs),
    output:
        png=report(f"{RESULTS}/figures/fig_rl_curves.png", caption="../report/fig_rl_curves.rst",
                   category="Figures"),
        pdf=f"{RESULTS}/figures/fig_rl_curves.pdf",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
    log:
        f"{LOGS}/figure_rl_curves.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo figure rl-curves --metrics {params.pairs} --out {output.png} > {log} 2>&1"


rule table_final:
    input:
        unpack(eval_inputs),
        tracking=f"{RESULTS}/tracking.csv",
    output:
        csv=report(f"{RESULTS}/figures/table_final.csv", caption="../report/table_final.rst", category="Tables"),
        md=f"{RESULTS}/figures/table_final.md",
    params:
        pairs=lambda w, input: pairs({k: v for k, v in input.items() if k != "tracking"}),
    log:
        f"{LOGS}/table_final.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo figure table --tracking {input.tracking} --evals {params.pairs} --out {output.csv} > {log} 2>&1"
