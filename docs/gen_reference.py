"""The reference pages, generated from the code at every `mkdocs build` (a MkDocs hook, see mkdocs.yml).

- reference/settings.md from the settings class (`workflows.runtime.settings.Settings`: every field, its
  environment variable, type, default and docstring) and the CLI's own variables;
- reference/http-api.md from the API's OpenAPI spec (`workflows.interfaces.api.create_app().openapi()`);
- reference/cli.md from the `sagas` command's `--help`, command by command.

Nothing is committed, so nothing can go stale: a renamed module or a removed setting fails the build.
`python docs/gen_reference.py OUT_DIR` writes the three pages to OUT_DIR, to read them without MkDocs.
"""
from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from typing import Any

import click

PAGES = ("reference/settings.md", "reference/http-api.md", "reference/cli.md")

# Variables read outside the settings class: each must still be read where it says, or the build fails.
OTHER_VARIABLES = {
    "SAGA_LOG_LEVEL": ("workflows/runtime/logs.py", "`INFO`",
                       "level of the `workflows.*` loggers (JSON lines on stderr)"),
    "SAGA_EVENT_NAMESPACE": ("workflows/choreography/bus.py", "`events`",
                             "the choreography's topic exchange, and the prefix of its `events.<service>` queues"),
}
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ settings


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written under each annotated attribute of `cls` (pydantic does not keep them)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_page() -> str:
    from workflows.interfaces.cli import main
    from workflows.runtime.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    docs = _attribute_docs(Settings)
    lines = ["# Settings", "",
             "Generated from the settings class (`workflows/runtime/settings.py`) at every docs build. Every",
             f"setting is an environment variable (prefix `{prefix}`) with an embedded default: with none set, the",
             "library runs on SQLite and kombu's filesystem broker in `.saga-data/`.", ""]
    for name, field in Settings.model_fields.items():
        if name not in docs:
            raise SystemExit(f"Settings.{name} has no docstring: document it in workflows/runtime/settings.py")
        annotation = field.annotation
        type_ = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        default = field.get_default()
        value = str(default).lower() if isinstance(default, bool) else default
        shown = "none" if default in (None, "") else f"`{value}`"
        lines += [f"## `{prefix}{name.upper()}`", "", f"{type_.replace('|', 'or')}, default {shown}", "",
                  docs[name], ""]
    lines += ["", "## Read elsewhere", "",
              "| variable | default | meaning | read by |", "| --- | --- | --- | --- |"]
    for param in main.params:
        if isinstance(param, click.Option) and param.envvar:
            default = param.show_default if isinstance(param.show_default, str) else param.default
            lines.append(f"| `{param.envvar}` | `{default}` | {_cell(param.help or '')} | the `sagas` CLI "
                         f"(`{param.opts[0]}`) |")
    for variable, (path, default, meaning) in OTHER_VARIABLES.items():
        if variable not in (ROOT / path).read_text(encoding="utf-8"):
            raise SystemExit(f"{variable} is no longer read in {path}: update OTHER_VARIABLES in docs/gen_reference.py")
        lines.append(f"| `{variable}` | {default} | {meaning} | `{path}` |")
    lines += ["", "The Celery settings the runtime relies on (JSON only, late acks, prefetch 1, the sweep on beat,",
              "Redis's visibility timeout) are in the repository's `celeryconfig.py`, read from the same",
              "variables; see [Deploying workers](../operations/deploy.md).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ HTTP API


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_schema_name(s) for s in schema[key])
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def http_api_page() -> str:
    from workflows.interfaces.api import create_app
    from workflows.runtime.settings import Settings

    spec = create_app(Settings()).openapi()
    lines = ["# HTTP API", "",
             f"Generated from the OpenAPI spec of `{spec['info']['title']}` {spec['info']['version']} "
             "(`workflows.interfaces.api.create_app`) at every docs build. A running API serves the same spec at",
             "`/openapi.json` and a try-it page at `/docs`. With `SAGA_API_TOKEN` set, every endpoint but",
             "`/healthz` needs `Authorization: Bearer <token>`. Errors are JSON: [ErrorBody](#errorbody).", "",
             "How to use it, with curl: [HTTP API and CLI](../guide/api-and-cli.md).", ""]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            lines += [f"## `{method.upper()} {path}`", "", op.get("description") or op.get("summary", ""), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | type | meaning |", "| --- | --- | --- | --- | --- |"]
                for p in params:
                    schema = p.get("schema", {})
                    lines.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                                 f"{_cell(_schema_name(schema))} | {_cell(p.get('description', ''))} |")
                lines.append("")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                lines += [f"Body ({media}): {_schema_name(content.get('schema', {}))}.", ""]
            lines += ["| status | meaning | body |", "| --- | --- | --- |"]
            for status, answer in sorted(op.get("responses", {}).items()):
                schema = next(iter(answer.get("content", {}).values()), {}).get("schema", {})
                lines.append(f"| {status} | {_cell(answer.get('description', ''))} | "
                             f"{_cell(_schema_name(schema)) if schema else ''} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [" ".join(schema["description"].split()), ""]
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if props:
            lines += ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
            for field, fs in props.items():
                lines.append(f"| `{field}` | {_cell(_schema_name(fs))} | {'yes' if field in required else 'no'} | "
                             f"{_cell(fs.get('description', ''))} |")
            lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI


def _help(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    settings = {"terminal_width": 100, "max_content_width": 100, **command.context_settings}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    lines = [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```text", command.get_help(ctx), "```", ""]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _help(sub, [*path, name], ctx)
    return lines


def cli_page() -> str:
    from workflows.interfaces.cli import main

    return "\n".join(["# CLI", "",
                      "Generated from `sagas --help` and each command's `--help` at every docs build. The same",
                      "`SAGA_*` variables as the workers configure it ([Settings](settings.md)). Exit codes: 0 done;",
                      "1 refused or not found, with the reason on stderr; 2 usage error.", "",
                      *_help(main, ["sagas"], None)])


def pages() -> dict[str, str]:
    return {"reference/settings.md": settings_page(), "reference/http-api.md": http_api_page(),
            "reference/cli.md": cli_page()}


# ------------------------------------------------------------------ the MkDocs hook


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, text in pages().items():
        if files.get_file_from_path(path) is not None:
            raise SystemExit(f"docs/{path} is generated at build time: delete the committed file")
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reference-out")
    for path, text in pages().items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text, encoding="utf-8")
        print(out / path)
