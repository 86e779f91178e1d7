rule release:
    """The whole locked chain for one lot (`sc-celltherapy release`): results.json, lot.h5ad,
    report.html, composition.png and audit.jsonl in results/{lot}/release; the report,
    composition plot and results.json are items of `snakemake --report`."""
    input:
        lot_input,
    output:
        report(
            directory(f"{OUT}/{{lot}}/release"),
            patterns=["{name}.html", "{name}.png", "{name}.json"],
            caption="../report/release.rst",
            category="Lots",
            subcategory="{lot}",
            labels={"lot": "{lot}", "file": "{name}"},
        ),
    log:
        f"{OUT}/{{lot}}/logs/release.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 2
    resources:
        mem_mb=lot_mem_mb,
        runtime=lot_runtime,
        gpu=config["gpus_per_mapping"],
    params:
        input=lot_path,
        spec=spec_args(),
        reference=config["reference"],
        operator=shlex.quote(config["operator"]),
        seed=config["seed"],
    shell:
        "sc-celltherapy release {params.input} {params.spec} --reference {params.reference}"
        " --lot-id {wildcards.lot} --operator {params.operator} --seed {params.seed}"
        " --out {output} > {log} 2>&1"
