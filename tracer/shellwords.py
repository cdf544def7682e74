"""Split a shell script (the argument of `sh -c`) into simple commands and words, remembering
where each character of a word came from, so a word can be changed in place.

Pure. This is not a shell: it knows quotes ('...', "...", $'...'), backslashes, comments,
the operators that separate commands (; & | && || ( ) $( ` and newlines) and redirections
(whose targets are file names, not arguments; a here-string's word, `<<< WORD`, is what the
command reads on stdin: kept, and marked `here`). Expansions ($VAR, globs) stay as written.
Its one use is redaction: find `mysql -pX` inside `sh -c "cd /srv && mysql -pX db"` and
mask X while every other character of the script stays as it was typed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

SEPARATORS = frozenset(";&|()\n`")
REDIRECTS = frozenset("<>")


@dataclass
class Word:
    start: int                            # where the word begins in the script (its quotes included)
    end: int = 0                          # and where it ends
    value: str = ""                       # the word as the command receives it (quotes removed)
    where: list[int] = field(default_factory=list)   # script index of each character of value
    here: bool = False                    # a here-string (<<< WORD): the command's stdin, not an argument

    def add(self, char: str, at: int) -> None:
        self.value += char
        self.where.append(at)


def commands(script: str) -> list[list[Word]]:
    """The script's simple commands, each a list of words (redirection targets left out, a
    here-string's word kept with here=True)."""
    out: list[list[Word]] = [[]]
    word: Word | None = None
    redirect_target: bool | str = False    # the next word is a file a redirection names ("here": a here-string)
    i, n = 0, len(script)

    def end_word() -> None:
        nonlocal word, redirect_target
        if word is not None:
            if redirect_target == "here":
                word.here = True
                out[-1].append(word)
                redirect_target = False
            elif redirect_target:
                redirect_target = False
            else:
                out[-1].append(word)
        word = None

    while i < n:
        c = script[i]
        if c in " \t":
            end_word()
            i += 1
        elif c in REDIRECTS or (c == "&" and script[i + 1:i + 2] == ">"):
            if word is not None and word.value.isdigit() and word.where[-1] == i - 1:
                word = None                                  # `2>`: a file descriptor, not an argument
            end_word()
            start = i
            while i < n and script[i] in "<>&|":
                i += 1
            redirect_target = "here" if script[start:i] == "<<<" else True
        elif c in SEPARATORS or (c == "$" and script[i + 1:i + 2] == "("):
            end_word()
            redirect_target = False
            if out[-1]:
                out.append([])
            i += 2 if c == "$" else 1
        elif c == "#" and word is None:
            while i < n and script[i] != "\n":
                i += 1
        else:
            if word is None:
                word = Word(i)
            if c == "'":
                end = script.find("'", i + 1)
                end = n if end < 0 else end
                for j in range(i + 1, end):
                    word.add(script[j], j)
                i = end + 1
            elif c == "$" and script[i + 1:i + 2] == "'":      # $'...': escapes kept as written
                j = i + 2
                while j < n and script[j] != "'":
                    if script[j] == "\\" and j + 1 < n:
                        word.add(script[j], j)
                        j += 1
                    word.add(script[j], j)
                    j += 1
                i = j + 1
            elif c == '"':
                j = i + 1
                while j < n and script[j] != '"':
                    if script[j] == "\\" and j + 1 < n and script[j + 1] in '$`"\\\n':
                        j += 1
                    word.add(script[j], j)
                    j += 1
                i = j + 1
            elif c == "\\":
                if i + 1 < n and script[i + 1] != "\n":
                    word.add(script[i + 1], i + 1)
                i += 2
            else:
                word.add(c, i)
                i += 1
            word.end = i
    end_word()
    return [cmd for cmd in out if cmd]


def replace(script: str, word: Word, new: str) -> list[tuple[int, int, str]]:
    """The edits (start, end, text) that turn `word` into `new` in the script: only the part
    that differs is rewritten, so the quotes and everything around the change stay."""
    old = word.value
    if old == new:
        return []
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    s = 0
    while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
        s += 1
    text = new[p:len(new) - s]
    if p < len(old) - s:
        start, end = word.where[p], word.where[len(old) - s - 1] + 1
        if any(c in "'\"\\" for c in script[start:end]):
            # the change spans quotes: rewrite the whole word, quoted anew, rather than unbalance them
            return [(word.start, word.end, shlex.quote(new))]
        return [(start, end, text)]
    at = word.where[p] if p < len(old) else word.where[-1] + 1
    return [(at, at, text)]


def apply(script: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, text in sorted(edits, reverse=True):
        script = script[:start] + text + script[end:]
    return script
