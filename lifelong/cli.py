"""The ``lifelong`` command: ``run`` a pipeline, list ``plugins``, and the commands plugins register
(``serve`` and ``models`` from the mlflow plugin).

Exit status: 0 when the run finished and every tracker recorded all of it; 2 for a user error
(config, unknown names, bad files, a tracker that cannot be reached, a run that diverged), with
one paragraph that names the problem and never a traceback; 3 when the run finished but a tracker
reports that it did not record all of it (``complete: false``); 4 when a data-parallel rank lost
another rank (it died or stopped answering: restart the job with ``--resume``); 128 + N when
signal N stopped it.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from lifelong import __version__
from lifelong.errors import UserError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _lost(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(4)


def _host(ctx: click.Context):
    return _host_for(ctx.obj["plugins"], ctx.obj["blocked"])


class PluginGroup(click.Group):
    """The kernel's commands plus those plugins register (``register_commands``).

    Click resolves the subcommand after parsing the group's own options, so the plugin host that
    supplies commands honours ``--plugin`` and ``--block``.
    """

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        cached = ctx.meta.get("lifelong.commands")
        if cached is None:
            try:
                host = _host_for(ctx.params.get("plugins") or (), ctx.params.get("blocked") or ())
            except UserError as exc:
                _fail(str(exc))
            cached = ctx.meta["lifelong.commands"] = {name: command for name, (command, _) in host.commands.items()}
        return cached

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._plugin_commands(ctx).get(name)


def _host_for(plugins: tuple[str, ...] | list[str], blocked: tuple[str, ...] | list[str]):
    from lifelong.host import PluginHost

    return PluginHost(plugins=list(plugins), blocked=list(blocked))


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lifelong")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Load a plugin module by import path (repeatable).")
@click.option("--block", "blocked", multiple=True, metavar="NAME", help="Do not load the plugin NAME (repeatable).")
@click.pass_context
def main(ctx: click.Context, plugins: tuple[str, ...], blocked: tuple[str, ...]) -> None:
    """lifelong: a continual-learning pipeline built from plugins."""
    ctx.obj = {"plugins": list(plugins), "blocked": list(blocked)}


@main.command()
@click.argument("pipeline_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one pipeline value (repeatable).")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="Write the run summary as JSON here (and the heatmap beside it).")
@click.option("--dead-letters", "dead_letter_path", default="dead_letters.jsonl", show_default=True, type=click.Path(dir_okay=False), help="Where bad records go (each line names its run).")
@click.option("--resume", is_flag=True, help="Continue the session checkpointed in [checkpoint] dir from its newest valid checkpoint.")
@click.option("--nproc", type=click.IntRange(1, 1024), default=None, help="Train data-parallel as this many ranks on this machine (torch.distributed; see README 'Scaling out').")
@click.pass_context
def run(
    ctx: click.Context,
    pipeline_file: str | None,
    overrides: tuple[str, ...],
    summary_path: str | None,
    dead_letter_path: str,
    resume: bool,
    nproc: int | None,
) -> None:
    """Run PIPELINE_FILE (TOML), or the built-in Split-Digits pipeline when none is given."""
    from lifelong import config, distributed, pipeline, report
    from lifelong.errors import Interrupted
    from lifelong.plan import first_line, out_of_memory
    from lifelong.progress import progress_bar

    if nproc is not None and not distributed.requested():
        from lifelong.launch import spawn, strip_nproc

        sys.exit(spawn(nproc, strip_nproc(sys.argv[1:])))
    try:
        raw = config.load(pipeline_file, list(overrides))
        plan = pipeline.build(_host(ctx), raw, dead_letter_path, resume=resume, summary_path=summary_path)
    except UserError as exc:
        _fail(str(exc))
    except (MemoryError, RecursionError) as exc:  # what no estimate caught: still the pipeline's sizes
        _fail(f"the pipeline could not be built: {type(exc).__name__} (a size or a nesting in it is too large)")
    except distributed.RankLost as exc:
        _lost(exc)
    source = pipeline_file or "the built-in default pipeline"
    verb = "resuming" if resume else "running"
    ranks = f", {plan.world.size} ranks" if plan.world is not None else ""
    if plan.lead:
        click.echo(f"lifelong: {verb} {source} on {plan.device}{ranks} (session {plan.session.id})", err=True)
    heatmap = Path(summary_path).with_suffix(".png") if summary_path else None
    try:
        if plan.lead:
            with progress_bar(plan, initial=plan.session.step) as bar:
                summary = pipeline.Runner(plan, progress=bar).execute(heatmap)
        else:  # rank 0 reports for the job
            pipeline.Runner(plan).execute()
            return
    except UserError as exc:
        _fail(str(exc))
    except distributed.RankLost as exc:
        _lost(exc)
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        # what no estimate caught (lifelong.resources): the run is marked failed, and says which sizes to lower
        _fail(
            f"ran out of memory while training ({first_line(exc)}): lower the model's sizes, learner.batch_size or "
            "learner.eval_batch_size, or the strategies' memories"
        )
    except Interrupted as exc:
        if plan.lead:
            click.echo(f"lifelong: {exc}", err=True)
        sys.exit(128 + getattr(signal, exc.signal_name, signal.SIGTERM).value)
    click.echo(report.table(summary))
    for name, result in summary.get("trackers", {}).items():
        if isinstance(result, dict) and result.get("message"):
            click.echo(f"{name}: {result['message']}")
    for error in summary.get("errors", []):
        click.echo(f"warning: {error}", err=True)
    if summary.get("checkpoint"):
        click.echo(f"checkpoint: {summary['checkpoint']}")
    if summary_path:
        try:
            Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
            Path(summary_path).write_text(json.dumps(summary, indent=2, default=str))
        except OSError as exc:  # checked writable before training; the disk may have changed since
            _fail(f"--summary: cannot write {summary_path}: {exc.strerror or exc}")
        click.echo(f"summary: {summary_path}")
        if summary.get("heatmap"):
            click.echo(f"heatmap: {summary['heatmap']}")
    incomplete = sorted(
        name
        for name, result in summary.get("trackers", {}).items()
        if isinstance(result, dict) and result.get("complete") is False
    )
    if incomplete:
        click.echo(
            f"error: the run finished, but {', '.join(incomplete)} did not record all of it (see above); exit status 3",
            err=True,
        )
        sys.exit(3)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List plugins, where each came from, its components with their options, and its hooks."""
    try:
        described = _host(ctx).describe()
    except UserError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    for plugin in described["plugins"]:
        state = "" if plugin["available"] else "  [unavailable]"
        click.echo(f"{plugin['name']} {plugin['version'] or ''} ({plugin['source']}: {plugin['module']}){state}")
        if not plugin["available"]:
            click.echo(f"    reason: {plugin['reason']}")
            if plugin["hint"]:
                click.echo(f"    hint: {plugin['hint']}")
            continue
        click.echo(f"    hooks: {', '.join(plugin['hooks'])}")
        if plugin.get("commands"):
            click.echo(f"    commands: {', '.join(plugin['commands'])}")
        for comp in plugin["components"]:
            click.echo(f"    {comp['kind']} {comp['name']}: {comp['help']}")
            if "data_parallel" in comp:
                click.echo(f"        data-parallel: {comp['data_parallel'] or 'no (refused when WORLD_SIZE is set)'}")
            for opt in comp["options"]:
                click.echo(f"        {opt['name']} ({opt['type']}) = {opt['default']!r}  {opt['help']}")
    for section, rows in described.get("kernel_options", {}).items():
        click.echo(f"kernel [{section}]")
        for opt in rows:
            click.echo(f"        {opt['name']} ({opt['type']}) = {opt['default']!r}  {opt['help']}")
    if described["blocked"]:
        click.echo(f"blocked: {', '.join(described['blocked'])}")


if __name__ == "__main__":
    main()
