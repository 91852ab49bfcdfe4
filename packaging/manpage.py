"""Render a click command tree as a man page (roff), the way help2man would.

`render` is pure: a click command in, man(7) text out. packaging/build calls
it on the packaged program, so the page says exactly what `--help` says.
"""

from __future__ import annotations

import click


def escape(text: str) -> str:
    """Quote roff's special characters in running text."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # a line starting with . or ' would be read as a request
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def _options(ctx: click.Context, command: click.Command) -> list[str]:
    out: list[str] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out += [".TP", f"\\fB{escape(names)}\\fR", escape(help_text or "")]
    return out


def _subcommands(ctx: click.Context, group: click.Group, prefix: str) -> list[str]:
    out: list[str] = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = click.Context(sub, info_name=name, parent=ctx)
        usage = " ".join(sub.collect_usage_pieces(sub_ctx))
        out += [".TP", f"\\fB{escape(prefix + ' ' + name)}\\fR {escape(usage)}"]
        out += [escape(p) for p in _paragraphs(sub.help or sub.short_help or "")]
        options = _options(sub_ctx, sub)
        if options:
            out += [".RS", *options, ".RE"]
        if isinstance(sub, click.Group):
            out += _subcommands(sub_ctx, sub, f"{prefix} {name}")
    return out


def render(
    command: click.Command, name: str, version: str, date: str, files: dict[str, str]
) -> str:
    """The man page of `command` installed as `name`, section 1; `files`: path -> what."""
    ctx = click.Context(command, info_name=name)
    paragraphs = _paragraphs(command.help or "")
    summary = paragraphs[0].rstrip(".") if paragraphs else name
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [
        f'.TH {name.upper()} 1 "{date}" "{name} {version}" "User Commands"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{escape(name)}\\fR {escape(usage)}",
        ".SH DESCRIPTION",
    ]
    for paragraph in paragraphs[1:] or paragraphs:
        lines += [escape(paragraph), ".PP"]
    lines.pop()
    lines += [".SH OPTIONS", *_options(ctx, command)]
    if isinstance(command, click.Group):
        commands = _subcommands(ctx, command, name)
        if commands:
            lines += [".SH COMMANDS", *commands]
    if files:
        lines.append(".SH FILES")
        for path, what in files.items():
            lines += [".TP", f"\\fI{escape(path)}\\fR", escape(what)]
    return "\n".join(lines) + "\n"
