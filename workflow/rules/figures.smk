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
        caption=lambda w: get_track(w.track).FIGURES[w.get("figure") or w.get("table")]["caption"],
    log:
        f"{LOGS}/{{track}}/figure/{{figure}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo figure {wildcards.figure} --track {wildcards.track} --out {output.png} {params.pairs} > {log} 2>&1"


rule table:
    input:
        unpack(figure_inputs),
    output:
        csv=report(f"{RESULTS}/{{track}}/figures/{{table}}.csv", caption="../report/table.rst", category="Tables",
                   subcategory="{track}"),
        md=f"{RESULTS}/{{track}}/figures/{{table}}.md",
    params:
        pairs=lambda w, input: pairs(dict(input.items())),
        caption=lambda w: get_track(w.track).FIGURES[w.get("figure") or w.get("table")]["caption"],
    log:
        f"{LOGS}/{{track}}/table/{{table}}.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "frpo figure {wildcards.table} --track {wildcards.track} --out {output.csv} {params.pairs} > {log} 2>&1"
