# Stage 5: figures and tables, one rule each for any figure or table a track names (frpo.tracks: FIGURES), drawn
# from the track's tidy tables (matplotlib; every one is in the report: snakemake --report report.html).


rule figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(f"{RESULTS}/{{track}}/figures/{{figure}}.png", caption="../report/figure.rst", category="Figures",
                   subcategory="{track}"),
        pdf=f"{RESULTS}/{{track}}/figures/{{figure}}.pdf",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
        options=options_json,
        caption=lambda w: module(w.track).FIGURES[w.figure]["caption"],
        kind=lambda w: VIEWS[w.track]["track"],
    log:
        f"{LOGS}/{{track}}/figure/{{figure}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=60,  # minutes: the floor figure bootstraps the floor of every RL model
    conda:
        ENV
    shell:
        "frpo figure {wildcards.figure} --track {params.kind} --out {output.png} --options {params.options:q} {params.pairs} > {log} 2>&1"


rule figure_across:  # a figure drawn once over every experiment of a track (scope: track), e.g. one model each
    input:
        unpack(figure_inputs),
    output:
        png=report(f"{RESULTS}/figures/{{kind}}/{{figure}}.png", caption="../report/figure.rst", category="Figures",
                   subcategory="{kind}"),
        pdf=f"{RESULTS}/figures/{{kind}}/{{figure}}.pdf",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
        options=options_json,
        caption=lambda w: get_track(w.kind).FIGURES[w.figure]["caption"],
    log:
        f"{LOGS}/figures/{{kind}}/{{figure}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=60,  # minutes: the floor figure bootstraps the floor of every RL model
    conda:
        ENV
    shell:
        "frpo figure {wildcards.figure} --track {wildcards.kind} --out {output.png} --options {params.options:q} {params.pairs} > {log} 2>&1"


rule table:
    input:
        unpack(figure_inputs),
    output:
        csv=report(f"{RESULTS}/{{track}}/figures/{{table}}.csv", caption="../report/table.rst", category="Tables",
                   subcategory="{track}"),
        md=f"{RESULTS}/{{track}}/figures/{{table}}.md",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
        options=options_json,
        caption=lambda w: module(w.track).FIGURES[w.table]["caption"],
        kind=lambda w: VIEWS[w.track]["track"],
    log:
        f"{LOGS}/{{track}}/table/{{table}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=60,  # minutes: the floor figure bootstraps the floor of every RL model
    conda:
        ENV
    shell:
        "frpo figure {wildcards.table} --track {params.kind} --out {output.csv} --options {params.options:q} {params.pairs} > {log} 2>&1"
