"""The `wbx` entry point: global flags in any position, verbs from one registry.

Each concern registers its verbs in its own module (listed in VERB_MODULES); a verb's
handler returns an Output or raises a WorkbooksError, and this module turns that into the
mode's output and the exit code decided by the error's type.

Start-up is lazy: VERB_INDEX says which module holds each top-level verb, so `wbx query`
imports the kernel verbs only (not the HTTP client of the admin verbs, the supervisor of
`serve`, ...). Bare `wbx`, `wbx help`, `--help` and any word the index does not know import
every module, so the verb tree and argparse's own errors are always complete; a stale index
entry only costs speed (the verb is then looked up in every module).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbooks import __version__
from workbooks.cli.output import HUMAN, Output, Style, detect_mode, emit, emit_error
from workbooks.errors import UsageError, WorkbooksError

# Modules that add verbs; each has `register(subparsers)`.
VERB_MODULES = [
    "workbooks.cli.kernel_verbs",
    "workbooks.cli.ops_verbs",
    "workbooks.cli.trust_verbs",
    "workbooks.cli.admin_verbs",
    "workbooks.cli.agent_verbs",
    "workbooks.cli.toolkit_verbs",
    "workbooks.cli.telemetry_verbs",
    "workbooks.cli.workflow_verbs",
    "workbooks.cli.loadtest_verbs",
]

# Top-level verb -> the module that registers it (tests/test_cli_startup.py checks it).
VERB_INDEX = {
    **dict.fromkeys(("query", "parse", "tangle", "lint", "check-upgrade", "render"), "workbooks.cli.kernel_verbs"),
    **dict.fromkeys(("serve", "worker", "ops"), "workbooks.cli.ops_verbs"),
    **dict.fromkeys(("init", "whoami", "sign", "verify", "ledger", "bundle", "unbundle", "mirror", "federate", "repo"),
                    "workbooks.cli.trust_verbs"),
    **dict.fromkeys(("tenant", "key"), "workbooks.cli.admin_verbs"),
    "agent": "workbooks.cli.agent_verbs",
    "toolkit": "workbooks.cli.toolkit_verbs",
    "telemetry": "workbooks.cli.telemetry_verbs",
    "workflow": "workbooks.cli.workflow_verbs",
    "loadtest": "workbooks.cli.loadtest_verbs",
}

GLOBAL_FLAGS = {"--json": "json", "--agent": "agent"}


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, minus its `import shutil` (and bz2, lzma, fnmatch with it) on
    every add_argument: the terminal width is asked of the terminal directly."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            import os

            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # usage errors are typed, not SystemExit(2) prose
        raise UsageError(f"{self.prog}: {message}")


def _register(subs, name: str) -> None:
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return
        raise
    mod.register(subs)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `verb`, only the module that VERB_INDEX names for it is imported."""
    parser = _Parser(prog="wbx", description="Workbooks: Org-mode workbooks, served.", add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show help")
    parser.add_argument("--version", action="store_true", help="print the version")
    subs = parser.add_subparsers(dest="verb", parser_class=_Parser, prog="wbx")
    help_p = subs.add_parser("help", help="list the verbs (--json for the verb tree)")
    help_p.set_defaults(func=None)
    only = VERB_INDEX.get(verb) if verb else None
    if only is not None:
        _register(subs, only)
        if verb in subs.choices:
            return parser
    for name in VERB_MODULES:
        if name != only:
            _register(subs, name)
    return parser


def first_word(args: list[str]) -> str | None:
    """The verb the command line names (its first word that is not a flag), if any."""
    for a in args:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def verb_path(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> str:
    """`repo log`, `ledger verify`, `query`: the verb words the parsed command chose."""
    words: list[str] = []
    p = parser
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(ns, sub.dest, None) if sub is not None else None
        if not chosen or chosen not in sub.choices:
            return " ".join(words) or "wbx"
        words.append(chosen)
        p = sub.choices[chosen]


def check_tenant_arg(ns: argparse.Namespace) -> None:
    """`--tenant` is a strict slug everywhere; anything else is a usage error (exit 2) before
    any verb runs, so no verb can turn a bad name into a path."""
    value = getattr(ns, "tenant", None)
    if value is None:
        return
    from workbooks.gitstore.tenant import InvalidTenant, validate_tenant

    try:
        validate_tenant(value)
    except InvalidTenant as e:
        raise UsageError(f"--tenant: {e.message}", hint=e.hint) from None


def verb_tree(parser: argparse.ArgumentParser) -> dict:
    """The verbs, their subverbs and arguments, as data."""

    def walk(p: argparse.ArgumentParser) -> dict:
        node: dict = {"help": p.description or "", "args": [], "verbs": {}}
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    child = walk(sub)
                    child["help"] = helps.get(name) or child["help"]
                    node["verbs"][name] = child
            elif action.dest not in ("help",):
                node["args"].append(
                    {
                        "name": action.option_strings[0] if action.option_strings else action.dest,
                        "help": action.help or "",
                        "required": bool(action.required) if action.option_strings else action.nargs not in ("?", "*"),
                    }
                )
        return node

    tree = walk(parser)
    tree["global_flags"] = ["--json", "--agent"]
    return tree


def status_page() -> Output:
    """Bare `wbx`: what this is, which kernel it carries, where to go next."""
    data: dict = {"name": "wbx", "version": __version__}
    try:
        from workbooks.oql.kernel import WASM_PATH, kernel_wasm_path
        import hashlib

        path = kernel_wasm_path()
        data["kernel"] = {
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "shipped": path == WASM_PATH,
        }
    except OSError as e:
        data["kernel"] = {"error": str(e)}

    def human(d: dict, st: Style) -> str:
        k = d.get("kernel", {})
        lines = [
            f"{st.bold('wbx')} {d['version']} — Workbooks",
            f"  kernel  {k.get('sha256', k.get('error', '?'))[:16]}  ({k.get('bytes', '?')} bytes)",
            "",
            "  wbx query|tangle|lint FILE|-   Org in, JSON out",
            "  wbx render FILE|- [--page]     Org to HTML",
            "  wbx serve                      start the service",
            "  wbx help [--json]              every verb",
        ]
        return "\n".join(lines)

    return Output(data=data, human=human)


def split_globals(argv: list[str]) -> tuple[list[str], dict]:
    flags = {"json": False, "agent": False}
    rest = []
    agent_verb = first_word(argv) == "agent"
    for i, a in enumerate(argv):
        if a == "--":
            rest.extend(argv[i:])
            break
        if a == "--agent" and agent_verb and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            rest.append(a)  # `wbx agent run --agent SLUG`: the verb's own option, not the output mode
        elif a in GLOBAL_FLAGS:
            flags[GLOBAL_FLAGS[a]] = True
        else:
            rest.append(a)
    return rest, flags


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args_list, flags = split_globals(argv)
    mode = detect_mode(flags["json"], flags["agent"])
    verb = "wbx"
    try:
        word = first_word(args_list)
        if word in VERB_INDEX:
            verb = word
        parser = build_parser(word)
        ns = parser.parse_args(args_list)
        verb = verb_path(parser, ns)
        if ns.version:
            emit(mode, "version", Output(data={"version": __version__}, human=lambda d, s: f"wbx {d['version']}"))
            return 0
        if ns.help and ns.verb is None:
            emit(HUMAN if mode == HUMAN else mode, "help", Output(data=verb_tree(parser), human=lambda d, s: parser.format_help()))
            return 0
        if ns.verb is None:
            emit(mode, "status", status_page())
            return 0
        if ns.verb == "help":
            emit(mode, "help", Output(data=verb_tree(parser), human=lambda d, s: parser.format_help()))
            return 0
        check_tenant_arg(ns)
        ns.mode = mode
        out = ns.func(ns)
        if out is not None:
            emit(mode, verb, out)
            return out.exit_code
        return 0
    except WorkbooksError as e:
        emit_error(mode, verb, e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
