"""The agent shell's grammar, parsed host-side: no stage ever sees the shell line.

    line     := step ((';' | '&&' | '||' | newline) step)*
    step     := command ('|' command)*
    command  := (word | redirect)*          -- `NAME=value ...` alone assigns variables
    redirect := '<' word | ('>' | '>>' | '1>' | '1>>' | '2>' | '2>>') word | '2>&1'

Words: single quotes keep everything literal; double quotes keep spaces and expand `$NAME`,
`${NAME}` (a backslash escapes `$ " \\` and a backquote inside them); outside quotes a backslash
escapes the next character. `$NAME` / `${NAME}` expand to the shell's own variables only (set by
`NAME=value`; `$?` is the last status); an unknown name stays LITERAL (`echo $NOPE` prints
`$NOPE`), so a `$` meant for jq or grep survives. Expansions are not split into words and
there is no globbing. `#` at the start of a word starts a comment.

Refused with a message (never guessed): `&` (background), `(`/`)` subshells, backquotes and
`$(...)` command substitution, here-docs, `NAME=value cmd` (there is no environment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
MAX_NAME = 256
MAX_LINE = 64 * 1024  # characters; a longer line is refused before parsing


class ShellSyntaxError(Exception):
    pass


@dataclass
class Word:
    # parts: ("lit", text) | ("var", name, original-text) ; quoted-ness is resolved at parse time
    parts: list[tuple] = field(default_factory=list)
    assign: str | None = None  # NAME when the word is an unquoted `NAME=...` (parts hold the value)

    def unassign(self) -> None:
        """Not an assignment after all (`echo a=b`, `> a=b`): the `NAME=` is literal text."""
        if self.assign:
            self.parts.insert(0, ("lit", self.assign + "="))
            self.assign = None

    def add_lit(self, text: str) -> None:
        if self.parts and self.parts[-1][0] == "lit":
            self.parts[-1] = ("lit", self.parts[-1][1] + text)
        else:
            self.parts.append(("lit", text))


@dataclass
class Redirect:
    fd: int  # 0 stdin, 1 stdout, 2 stderr
    op: str  # "<" | ">" | ">>" | ">&1"
    target: Word | None  # None for 2>&1


@dataclass
class Command:
    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)

    def is_assignment(self) -> bool:
        return bool(self.words) and all(w.assign for w in self.words) and not self.redirects


@dataclass
class Step:
    op: str  # the connector before it: ";" | "&&" | "||"
    commands: list[Command]


def expand(word: Word, variables: dict[str, str]) -> str:
    out = []
    for part in word.parts:
        if part[0] == "lit":
            out.append(part[1])
        else:
            _, name, original = part
            value = variables.get(name)
            out.append(original if value is None else value)
    return "".join(out)


class _Lexer:
    def __init__(self, line: str):
        self.s = line
        self.i = 0

    def error(self, msg: str) -> ShellSyntaxError:
        return ShellSyntaxError(f"syntax error: {msg}")

    def var(self, word: Word) -> None:
        """At a `$`: add a variable reference (or a literal `$`)."""
        s, i = self.s, self.i
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if nxt == "{":
            end = s.find("}", i + 2, i + 2 + MAX_NAME)  # bounded: a line of `${${${...` stays linear
            name = s[i + 2:end] if end >= 0 else ""
            if end >= 0 and (NAME.fullmatch(name) or name == "?"):
                word.parts.append(("var", name, s[i:end + 1]))
                self.i = end + 1
                return
            word.add_lit("$")
            self.i += 1
            return
        if nxt == "(":
            raise self.error("command substitution $(...) is not supported")
        if nxt == "?":
            word.parts.append(("var", "?", "$?"))
            self.i += 2
            return
        m = NAME.match(s, i + 1)
        if m:
            word.parts.append(("var", m.group(0), s[i:m.end()]))
            self.i = m.end()
            return
        word.add_lit("$")
        self.i += 1

    def word(self) -> Word:
        """Read one word starting at a non-blank, non-operator character."""
        s = self.s
        w = Word()
        start = self.i
        m = ASSIGN.match(s, self.i)
        assign = None
        if m:
            assign = m.group(1)
            self.i = m.end()
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\n;&|<>()":
                if c in "()":
                    raise self.error("subshells and grouping with ( ) are not supported")
                break
            if c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                w.add_lit(s[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                self.i += 1
                while True:
                    if self.i >= len(s):
                        raise self.error("unterminated double quote")
                    d = s[self.i]
                    if d == '"':
                        self.i += 1
                        break
                    if d == "\\" and self.i + 1 < len(s) and s[self.i + 1] in '$"\\`\n':
                        if s[self.i + 1] != "\n":
                            w.add_lit(s[self.i + 1])
                        self.i += 2
                    elif d == "$":
                        self.var(w)
                    elif d == "`":
                        raise self.error("command substitution with backquotes is not supported")
                    else:
                        w.add_lit(d)
                        self.i += 1
                # an empty "" still makes a word
                if not w.parts:
                    w.add_lit("")
            elif c == "\\":
                if self.i + 1 < len(s):
                    if s[self.i + 1] != "\n":  # backslash-newline joins lines
                        w.add_lit(s[self.i + 1])
                    self.i += 2
                else:
                    w.add_lit("\\")
                    self.i += 1
            elif c == "$":
                self.var(w)
            elif c == "`":
                raise self.error("command substitution with backquotes is not supported")
            else:
                w.add_lit(c)
                self.i += 1
        if assign is not None:
            w.assign = assign
            if not w.parts:
                w.add_lit("")
        elif not w.parts and self.i == start:
            raise self.error(f"unexpected character {s[self.i]!r}")
        return w


def parse(line: str) -> list[Step]:
    """The steps of a shell line; raises ShellSyntaxError with a message for the agent."""
    if len(line) > MAX_LINE:
        raise ShellSyntaxError(f"syntax error: the line is over {MAX_LINE} characters (use files and `input`)")
    if "\x00" in line:
        raise ShellSyntaxError("syntax error: NUL byte in the command line")
    lx = _Lexer(line)
    s = line
    steps: list[Step] = []
    op = ";"
    commands: list[Command] = []
    cmd = Command()

    def end_command(required: bool, what: str) -> None:
        nonlocal cmd
        if not cmd.words and not cmd.redirects:
            if required:
                raise lx.error(f"missing command before {what!r}")
        else:
            commands.append(cmd)
        cmd = Command()

    def end_step(next_op: str, what: str) -> None:
        nonlocal commands, op
        if commands and not cmd.words and not cmd.redirects:
            raise lx.error(f"missing command before {what!r}")
        end_command(False, what)
        if commands:
            steps.append(Step(op, commands))
        elif next_op in ("&&", "||") or op in ("&&", "||"):
            raise lx.error(f"missing command before {what!r}")
        commands = []
        op = next_op

    while lx.i < len(s):
        c = s[lx.i]
        two = s[lx.i:lx.i + 2]
        if c in " \t":
            lx.i += 1
        elif c == "#" and (lx.i == 0 or s[lx.i - 1] in " \t\n;&|"):
            nl = s.find("\n", lx.i)
            lx.i = len(s) if nl < 0 else nl
        elif two == "&&" or two == "||":
            end_step(two, two)
            lx.i += 2
        elif c in ";\n":
            end_step(";", c)
            lx.i += 1
        elif c == "|":
            end_command(True, "|")
            lx.i += 1
        elif c == "&":
            if s[lx.i:lx.i + 2] == "&>":
                raise lx.error("&> is not supported: write > FILE 2>&1")
            raise lx.error("background jobs (&) are not supported")
        elif c in "<>" or (c in "12" and s[lx.i + 1:lx.i + 2] in ("<", ">") and
                           (lx.i == 0 or s[lx.i - 1] in " \t;|&\n")):
            fd = None
            if c in "12":
                fd = int(c)
                lx.i += 1
            if s[lx.i] == "<":
                if fd is not None and fd != 0:
                    raise lx.error(f"{fd}< is not supported")
                if s[lx.i:lx.i + 2] == "<<":
                    raise lx.error("here-documents (<<) are not supported: pass the text as `input`")
                lx.i += 1
                rop, rfd = "<", 0
            else:
                rfd = 1 if fd is None else fd
                if s[lx.i:lx.i + 2] == ">>":
                    rop = ">>"
                    lx.i += 2
                else:
                    rop = ">"
                    lx.i += 1
                if s[lx.i:lx.i + 2] == "&1" and rfd == 2 and rop == ">":
                    cmd.redirects.append(Redirect(2, ">&1", None))
                    lx.i += 2
                    continue
                if s[lx.i:lx.i + 1] == "&":
                    raise lx.error("only 2>&1 is supported among >& forms")
            while lx.i < len(s) and s[lx.i] in " \t":
                lx.i += 1
            if lx.i >= len(s) or s[lx.i] in "\n;&|<>":
                raise lx.error(f"missing file name after {rop!r}")
            target = lx.word()
            target.unassign()  # `> a=b` names the file a=b
            cmd.redirects.append(Redirect(rfd, rop, target))
        elif c in "()":
            raise lx.error("subshells and grouping with ( ) are not supported")
        else:
            w = lx.word()
            if w.assign and any(not x.assign for x in cmd.words):
                w.unassign()  # `echo a=b`: an ordinary argument after the command name
            cmd.words.append(w)
    if op in ("&&", "||") and not cmd.words and not cmd.redirects and not commands:
        raise lx.error(f"missing command after {op!r}")
    if commands and not cmd.words and not cmd.redirects:
        raise lx.error("missing command after '|'")
    end_step(";", "end")
    for st in steps:
        for c in st.commands:
            if c.words and c.words[0].assign and not c.is_assignment():
                name = c.words[0].assign
                raise ShellSyntaxError(
                    f"syntax error: `{name}=value command` is not supported (there is no environment): "
                    f"write `{name}=value; command ...$" + name + "`")
    return steps
