rule compare:
    """A new lot against the qualified lots before it in the sample sheet
    (`sc-celltherapy compare`)."""
    input:
        new=f"{OUT}/{{lot}}/release",
        history=lambda w: [f"{OUT}/{x}/release" for x in history_of(w.lot)],
    output:
        json=f"{OUT}/{{lot}}/compare.json",
        plot=report(
            f"{OUT}/{{lot}}/compare.png",
            caption="../report/compare.rst",
            category="Lots",
            subcategory="{lot}",
            labels={"lot": "{lot}", "file": "compare"},
        ),
    log:
        f"{OUT}/{{lot}}/logs/compare.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=compare_mem_mb,
        runtime=lot_runtime,
    params:
        spec=spec_args(),
        history=lambda w, input: " ".join(f"{d}/lot.h5ad" for d in input.history),
        seed=config["seed"],
    shell:
        "sc-celltherapy compare {input.new}/lot.h5ad --history {params.history} {params.spec}"
        " --seed {params.seed} --out {output.json} --plot {output.plot} > {log} 2>&1"
