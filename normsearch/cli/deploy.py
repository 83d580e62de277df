"""Shipping a configuration: `finalize` (train it on every source, keep a deployable model), `evaluate` and
`predict` with that model. Each shows progress on a terminal and plain lines when piped, and Ctrl-C ends it
with exit code 130, what was kept, and the command that continues.

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from normsearch.cli.common import app, console, err_console, user_errors
from normsearch.cli.feedback import Feedback, interrupted, quoted
from normsearch.cli.inspect import Pick
from normsearch.cli.report import CollectFormat, show_tables
from normsearch.metrics import SOURCE_VAL_ACC


@app.command("finalize")
@user_errors
def finalize(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The folder to write the model to.")],
    trial: Annotated[str | None, typer.Option(help="The trial to finalize.")] = None,
    pick_rule: Annotated[
        Pick | None, typer.Option("--pick", help="Or choose from the front by rule.")
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Networks to train (seeds recipe seed, +1, ...); >1: an ensemble.")
    ] = 1,
    max_source_drop: Annotated[
        float | None, typer.Option(help="With --pick max-target: within this many points of the best source.")
    ] = None,
) -> None:
    """Train the chosen configuration once on every source of the run (DomainBed's practice after
    selection), with the run's training recipe, through Ray; write a deployable model to -o: the ArchConfig
    with provenance, the weights (safetensors) and the preprocessing. `normsearch.load_model(DIR)` loads it.
    Slow: one full training per seed."""
    rule = pick_rule.value if pick_rule is not None else None
    feedback = Feedback("finalize", f"reading {run_dir} and choosing the configuration")
    which = ["--trial", trial] if trial else (["--pick", rule] if rule else [])
    again = f"normsearch finalize {quoted(run_dir, *which, '--seeds', seeds, '-o', output)}"

    def update(p: Any) -> None:
        feedback.update(p.message or "training", completed=p.epochs_done, total=p.total * max(p.epochs, 1))

    try:
        with feedback.shown():  # the first line comes at once; the imports may take a while
            from normsearch.search.finalize import prepare_finalize, run_finalize

            chosen = prepare_finalize(run_dir, output, trial, rule, seeds, max_source_drop)[1].trial_id
            which = ["--trial", chosen]  # the continuation trains the same trial, whatever the front is then
            again = f"normsearch finalize {quoted(run_dir, *which, '--seeds', seeds, '-o', output)}"
            feedback.update(f"starting Ray and loading the data to train {chosen} on every source")
            outcome = run_finalize(run_dir, output, trial, rule, seeds, max_source_drop, update)
    except KeyboardInterrupt:
        raise interrupted(
            f"what finished is kept in {output} (records and epoch checkpoints)", again
        ) from None
    if outcome.found:
        console.print(f"already on record, not trained again: {', '.join(outcome.found)}", highlight=False)
    for uid, reason in outcome.failed.items():
        console.print(f"[red]failed:[/red] {uid}: {reason}", highlight=False, soft_wrap=True)
    if outcome.unfinished:
        kept = f"{len(outcome.seeds) - len(outcome.unfinished)} of {len(outcome.seeds)} seed(s) finished"
        raise interrupted(f"{kept}; the others' last epoch checkpoints are kept in {output}", again)
    if outcome.failed:
        raise typer.Exit(1)
    _describe_model(output)


def _rounded(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _describe_model(output: Path) -> None:
    from normsearch.run.finalized import FinalFolder

    folder = FinalFolder.open(output)
    document, pre = folder.document(), folder.preprocessing()
    provenance = document["provenance"]
    console.print(
        f"wrote {output}: trial {provenance['trial']} of {provenance['run']} trained on "
        f"{', '.join(provenance['trained_on'])}, {len(provenance['seeds'])} seed(s); input "
        f"{pre['input_size'][0]}x{pre['input_size'][1]} RGB, mean {_rounded(pre['mean'])}, std "
        f"{_rounded(pre['std'])}, "
        f"{len(pre['classes'])} classes",
        highlight=False,
        soft_wrap=True,
    )
    for uid, final in provenance.get("final", {}).items():
        tests = ", ".join(f"{k} {v:.1f}" for k, v in (final.get("test") or {}).items())
        console.print(
            f"  {uid}: source val {final.get(SOURCE_VAL_ACC) or float('nan'):.1f}"
            + (f"; reported {tests}" if tests else ""),
            highlight=False,
        )
    console.print(
        f"load it with: model, preprocess = normsearch.load_model({str(output)!r})", highlight=False
    )


@app.command("evaluate")
@user_errors
def evaluate(
    model_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A `normsearch finalize` output.")],
    root: Annotated[
        Path | None, typer.Option(help="A DomainBed-layout folder: root/<domain>/<class>/<image>.")
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="Or a recipe: its data section's domains.")] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="Only this domain (repeatable; default: all).")
    ] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also the accuracy per class.")] = False,
    fmt: Annotated[CollectFormat, typer.Option("--format", help="Output format.")] = CollectFormat.table,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file.")] = None,
) -> None:
    """Accuracy of a finalized model per domain (and per class), in `collect`'s table formats; each
    domain's result is saved in DIR/evaluations.jsonl before anything is shown."""
    from normsearch.deploy.evaluate import check_inputs, evaluation_tables
    from normsearch.deploy.evaluate import evaluate as run_evaluate

    parts: list[Any] = (
        [model_dir] + (["--root", root] if root else []) + (["--recipe", recipe] if recipe else [])
    )
    for name in domain or []:
        parts += ["--domain", name]
    parts += (["--per-class"] if per_class else []) + ["--format", fmt.value]
    again = f"normsearch evaluate {quoted(*parts, *(['-o', output] if output else []))}"
    measured: list[str] = []
    from normsearch.run.finalized import FinalFolder

    FinalFolder.open(model_dir)  # a wrong folder or domain is one line, before anything else is shown
    check_inputs(root, recipe, domain)
    machine = fmt is not CollectFormat.table and output is None  # stdout is the table: progress to stderr
    feedback = Feedback("evaluate", "loading the model and the images", err_console if machine else None)

    def done(result: Any) -> None:
        measured.append(result.domain)
        feedback.update(f"{result.label}: {result.accuracy:.1f}% of {result.images} images", len(measured))

    try:
        with feedback.shown():
            evaluation = run_evaluate(model_dir, root, recipe, domain, on_domain=done)
    except KeyboardInterrupt:
        kept = f"results of {', '.join(measured) or 'no domain'} kept in {model_dir}/evaluations.jsonl"
        raise interrupted(kept, again) from None
    show_tables(evaluation_tables(evaluation, per_class), fmt, output)


@app.command("predict")
@user_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A `normsearch finalize` output.")],
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE_OR_FOLDER...", help="Image files or folders of them.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The CSV to write (path, class, ...).")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
) -> None:
    """The predicted class and its probability for every image, one CSV row each (path, class,
    probability, model), written batch by batch; a rerun with the same -o predicts only what is missing."""
    from normsearch.deploy.predict import list_images
    from normsearch.deploy.predict import predict as run_predict
    from normsearch.run.finalized import FinalFolder

    FinalFolder.open(model_dir)  # a wrong folder or input is one line, before anything else is shown
    list_images(images)

    again = f"normsearch predict {quoted(model_dir, *images, '-o', output, '--batch-size', batch_size)}"
    feedback = Feedback("predict", "loading the model and listing the images")
    state: dict[str, Any] = {}

    def update(p: Any) -> None:
        state["progress"] = p
        feedback.update(f"{p.done + p.kept}/{p.total} images", p.done + p.kept, p.total)

    try:
        with feedback.shown():
            progress = run_predict(model_dir, images, output, batch_size, on_progress=update)
    except KeyboardInterrupt:
        p = state.get("progress")
        kept = f"{p.done + p.kept} of {p.total} images predicted" if p else "nothing predicted yet"
        raise interrupted(f"{kept}, kept in {output}", again) from None
    kept = f" ({progress.kept} already in {output})" if progress.kept else ""
    console.print(
        f"wrote {output}: {progress.total} image(s), {progress.done} predicted now{kept}", highlight=False
    )
