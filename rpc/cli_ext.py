"""``sd ext ...``: install, list, load and unload extensions, and read their storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from daemon.errors import InvalidParams
from rpc.cli_common import (
    ENCODE,
    Ctx,
    fail,
    fmt_size,
    fmt_time,
    library_option,
    pass_ctx,
    print_kv,
    print_table,
)
from rpc.scaffold import LANGS, scaffold, source_tree


@click.group()
def ext() -> None:
    """Create, install, list, load and unload extensions."""


def _summary(r: dict[str, Any]) -> None:
    m = r.get("manifest") or {}
    jobs = ", ".join(j["name"] for j in r.get("jobs", [])) or "-"
    click.echo(f"{r['id']} {m.get('version', '')}: {r['state']}; jobs: {jobs}"
               + (f"; previous: {r['previous_version']}" if r.get("previous_version") else "")
               + (f"; error: {r['error']}" if r.get("error") else ""))


@ext.command("install")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_ctx
def ext_install(ctx: Ctx, path: Path) -> None:
    """Install and load an extension.

    PATH is a directory with manifest.json, or a .wasm file.
    """
    ctx.out(ctx.call("action:extensions.install.input.v1", {"path": str(path.resolve())}), _summary)


@ext.command("new")
@click.argument("ext_id", metavar="NAME")
@click.option("--lang", type=click.Choice(LANGS), default="rust", show_default=True,
              help="The extension's language")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create NAME/ [default: ./extensions if there is one, else .]")
@pass_ctx
def ext_new(ctx: Ctx, ext_id: str, lang: str, parent: Path | None) -> None:
    """Create extension NAME: manifest, one resumable job, a test.

    `make extensions` builds it when it is in the sd tree's extensions/; anywhere
    else `scripts/build-extensions.sh DIR`. Its test_NAME.py builds it,
    installs it into a real daemon and runs the job.
    """
    root = source_tree()
    if root is None:
        fail(InvalidParams("sd ext new needs the sd source tree (guest-sdk/, scripts/): "
                           "run the sd of an editable install (make setup)"))
    if parent is None:
        parent = Path("extensions") if Path("extensions").is_dir() else Path(".")
    try:
        dest, files, note = scaffold(ext_id, lang, parent, root)
    except InvalidParams as e:
        fail(e)
    result = {"id": ext_id, "lang": lang, "path": str(dest), "files": files, "note": note}

    def human(r: dict[str, Any]) -> None:
        click.echo(f"created {r['path']} ({lang}): {', '.join(files)}")
        if note:
            click.echo(note)
        in_tree = dest.parent == root / "extensions"
        build = "make extensions" if in_tree else f"bash {root}/scripts/build-extensions.sh {dest}"
        built = root / "build" / "extensions" / ext_id
        click.echo(f"build:   {build}\ninstall: sd ext install {built}\n"
                   f"run:     sd job run {ext_id} count --state '{{\"target\": 10}}' --wait\n"
                   f"test:    {root}/.venv/bin/pytest {dest}/test_{dest.name.replace('-', '_')}.py")
    ctx.out(result, human)


@ext.command("upgrade")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--force", is_flag=True, help="Install even if not newer (a downgrade)")
@pass_ctx
def ext_upgrade(ctx: Ctx, path: Path, force: bool) -> None:
    """Upgrade an installed extension to the version at PATH.

    Its running jobs pause, the new version loads, and they continue on it from
    their checkpoints. The version before is kept: `sd ext rollback ID`.
    """
    ctx.out(ctx.call("action:extensions.upgrade.input.v1",
                     {"path": str(path.resolve()), "force": force}), _summary)


@ext.command("rollback")
@click.argument("ext_id")
@pass_ctx
def ext_rollback(ctx: Ctx, ext_id: str) -> None:
    """Go back to the version before the last upgrade.

    Its running jobs pause and continue on the version brought back.
    """
    ctx.out(ctx.call("action:extensions.rollback.input.v1", {"id": ext_id}), _summary)


@ext.command("list")
@pass_ctx
def ext_list(ctx: Ctx) -> None:
    """List installed extensions."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no extensions installed")
            return
        print_table([{"id": r["id"], "version": (r.get("manifest") or {}).get("version"),
                      "state": r["state"], "jobs": ", ".join(j["name"] for j in r["jobs"]),
                      "error": r.get("error")} for r in rows],
                    ["id", "version", "state", "jobs", "error"])
    ctx.out(ctx.call("query:extensions.list.v1"), human)


@ext.command("info")
@click.argument("ext_id")
@pass_ctx
def ext_info(ctx: Ctx, ext_id: str) -> None:
    """Show an extension's manifest, jobs, triggers and state."""
    def human(r: dict[str, Any]) -> None:
        print_kv({k: v for k, v in r.items() if k != "triggers"})
        click.echo("triggers:")
        _triggers(r)
    ctx.out(ctx.call("query:extensions.info.v1", {"id": ext_id}), human)


def _triggers(r: dict[str, Any]) -> None:
    triggers = r.get("triggers") or []
    if not triggers:
        click.echo(f"{r['id']} declares no triggers")
        return
    print_table([{"on": t["on"], "job": t["job"], "debounce ms": t["debounce_ms"],
                  "state": "paused" if t["paused"] else "active", "pending": t["pending"],
                  "running": ", ".join(t["running_jobs"]), "fired": t["fired"],
                  "refused": t["refused"], "last error": t["last_error"]} for t in triggers],
                ["on", "job", "debounce ms", "state", "pending", "running", "fired", "refused",
                 "last error"])


@ext.command("triggers")
@click.argument("ext_id")
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_ctx
def ext_triggers(ctx: Ctx, ext_id: str, state: str) -> None:
    """Pause (off) or resume (on) an extension's triggers.

    Events that arrive while paused are counted and dropped."""
    ctx.out(ctx.call("action:extensions.triggers.input.v1", {"id": ext_id, "on": state == "on"}),
            _triggers)


def _lifecycle(verb: str) -> click.Command:
    @click.command(verb)
    @click.argument("ext_id")
    @pass_ctx
    def command(ctx: Ctx, ext_id: str) -> None:
        r = ctx.call(f"action:extensions.{verb}.input.v1", {"id": ext_id})
        ctx.out(r, _summary if verb != "unload" else lambda r: click.echo(f"unloaded {ext_id}"))
    command.help = f"{verb.capitalize()} an extension."
    return command


for _verb in ("load", "unload", "reload"):
    ext.add_command(_lifecycle(_verb))


@ext.command("storage")
@click.argument("ext_id")
@click.option("--prefix", default="", help="Only keys starting with this")
@library_option
@pass_ctx
def ext_storage(ctx: Ctx, ext_id: str, prefix: str, library: str | None) -> None:
    """Show what an extension stored in a library.

    Keys and their JSON values, of extension EXT_ID.
    """
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo(f"{ext_id} stored nothing in this library")
        for r in rows:
            click.echo(f"{r['key']} = {ENCODE(r['value']).decode()}")
    ctx.out(ctx.lib_call(library, "query:extension_storage.inspect.v1",
                         {"extension_id": ext_id, "prefix": prefix, "limit": 1000}), human)


@ext.command("stats")
@click.argument("ext_id", required=False)
@pass_ctx
def ext_stats(ctx: Ctx, ext_id: str | None) -> None:
    """What extensions cost: since start and in total.

    Every extension that has run, or only EXT_ID.
    """
    def human(views: list[dict[str, Any]]) -> None:
        if not views:
            click.echo("no extension has run yet")
        for i, v in enumerate(views):
            if i:
                click.echo()
            click.echo(f"{v['id']}  (since start: {fmt_time(v['started_at'])})")
            print_table(_stats_rows(v["since_start"], v["total"]),
                        ["figure", "since start", "total"])
    payload = {"id": ext_id} if ext_id else {}
    ctx.out(ctx.call("query:extensions.stats.v1", payload), human)


def _seconds(s: float) -> str:
    return f"{s:.3f} s" if s >= 1 else f"{s * 1000:.3f} ms"


def _stats_rows(since: dict[str, Any], total: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure; counts by key (operation, error code, outcome) get a row each."""
    rows: list[dict[str, Any]] = []

    def row(name: str, fn: Any) -> None:
        rows.append({"figure": name, "since start": fn(since), "total": fn(total)})

    def by_key(name: str, key: str) -> None:
        row(name, lambda f: str(sum(f[key].values())))
        keys = sorted(set(total[key]) | set(since[key]),
                      key=lambda k: (-total[key].get(k, 0), k))
        for k in keys:
            row(f"  {k}", lambda f, k=k: str(f[key].get(k, 0)))

    row("guest CPU", lambda f: _seconds(f["guest_cpu_s"]))
    row("host time on its calls", lambda f: _seconds(f["host_s"]))
    by_key("calls", "calls")
    by_key("errors", "errors")
    row("rate-limited calls", lambda f: str(f["rate_limited"]))
    row("log lines written", lambda f: str(f["log_lines"]))
    row("log lines suppressed", lambda f: str(f["log_suppressed"]))
    row("peak instance memory", lambda f: fmt_size(f["peak_memory_bytes"]))
    by_key("jobs", "jobs")
    return rows
