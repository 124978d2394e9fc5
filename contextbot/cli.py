"""The `contextbot` command line. Every user error is one line, `contextbot: error: ...`, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import ContextbotError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (plus a pointer to --help), not a usage dump.

    `flags`, if given, adds the parser's flags the first time they are needed (to parse, or to
    show help or usage): `contextbot train`'s come from TrainOptions, which loads PyTorch, and
    the other commands should not wait for that.
    """

    def __init__(self, *args, flags: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._flags = flags

    def _add_flags(self) -> None:
        if self._flags is not None:
            add, self._flags = self._flags, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_flags()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_flags()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_flags()
        return super().format_help()

    def error(self, message: str):
        raise ContextbotError(f"{message} (see '{self.prog} --help')")


#: Upper bounds of the counting flags: far above any useful value, far below a hang.
MAX_PER_CATEGORY = 10_000  # eval --per-category: 50 times the default


def _doc(description: str, *examples: str) -> dict:
    """A subcommand's --help: what it does, then example command lines, each kept on its line."""
    import textwrap
    return {"description": textwrap.fill(description, 78),
            "epilog": "examples:\n" + "\n".join(f"  {e}" for e in examples),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> Parser:
    from . import __version__
    p = Parser(prog="contextbot", description="A recurrent language model that remembers who "
               "'he' and 'she' mean across chat turns.")
    p.add_argument("--version", action="version", version=f"contextbot {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    sub.add_parser("train", help="train a model on a corpus", flags=_train_flags, **_doc(
        "Train a model on a corpus of Q:/A: conversations and write it as a safetensors "
        "checkpoint, with what --resume needs to continue exactly.",
        "contextbot train --out my.safetensors",
        "contextbot train --corpus my/train.txt --valid my/valid.txt --out my.safetensors",
        "contextbot train --out my.safetensors --resume"))

    a = sub.add_parser("ask", help="ask questions; each argument is one turn of one conversation", **_doc(
        "Ask questions of one conversation and print one reply per line, carrying the hidden "
        "state from turn to turn. With no QUESTION, read a question a line from standard input.",
        'contextbot ask "Who is Tom Cruise?" "Where does he live?"',
        'contextbot ask --no-carry "Who is Tom Cruise?" "Where does he live?"',
        'contextbot ask --temperature 0.8 --top-k 5 --seed 7 "Who is Megan Fox?"'))
    a.add_argument("questions", nargs="*", metavar="QUESTION")
    a.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")
    a.add_argument("--no-carry", action="store_true", help="zero the state before every turn")
    a.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); to sample, at least 0.001")
    a.add_argument("--top-k", type=int, help="sample from the k most likely tokens (k at least 1)")
    a.add_argument("--seed", type=int, default=0, help="seed for sampling, 0 to 2**64 - 1 (default 0)")

    ch = sub.add_parser("chat", help="chat in a terminal UI beside a live view of the hidden state", **_doc(
        "Chat in a terminal UI beside a live view of the hidden state: who 'he' and 'she' mean "
        "as the state holds them (the memory readout), its norm per layer, the gates, the "
        "carryover between turns and the most active units. F1 lists the keys.",
        "contextbot chat",
        "contextbot chat --checkpoint checkpoints/lstm.safetensors",
        "contextbot chat --web --port 8080"))
    ch.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")
    ch.add_argument("--web", action="store_true",
                    help="serve the same app to a browser (textual-serve) instead of this terminal; "
                         "prints the address to open, runs until Ctrl-C")
    ch.add_argument("--port", type=int, help="with --web: the port to listen on (default 8000)")
    ch.add_argument("--host", help="with --web: the address to listen on (default localhost: this "
                                   "machine only; another host, e.g. 0.0.0.0, exposes the chat, "
                                   "and the model, to the network)")

    e = sub.add_parser("eval", help="score context tracking by kind of conversation", **_doc(
        "Score context tracking on fresh conversations generated from a facts file, by kind of "
        "conversation, with the stateless comparison and the seed dialogue.",
        "contextbot eval",
        "contextbot eval --checkpoint checkpoints/lstm.safetensors --per-category 50",
        "contextbot eval --seed 7 --json > results.json"))
    e.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")
    e.add_argument("--seed", type=int, help="conversation seed (default: one training never uses)")
    e.add_argument("--per-category", type=int, default=200,
                   help=f"conversations per category, 1 to {MAX_PER_CATEGORY} (default 200)")
    e.add_argument("--facts", help="facts file (default corpus/facts.json)")
    e.add_argument("--valid", help="corpus for validation bits per character (default corpus/valid.txt)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")

    c = sub.add_parser("corpus", help="build or check a corpus")
    csub = c.add_subparsers(dest="corpus_command", metavar="ACTION", parser_class=Parser)
    b = csub.add_parser("build", help="write train.txt and valid.txt from a facts file", **_doc(
        "Generate train.txt and valid.txt from a facts file and print the full paths written. "
        "With --facts F they go beside F; without it, the shipped facts are used and they go "
        "into the current folder. The shipped corpus is only rewritten when asked for by name "
        "(--facts or --out-dir). The facts file is checked before anything is written.",
        "contextbot corpus build --facts my/facts.json",
        "contextbot corpus build --out-dir my-corpus --seed 2"))
    b.add_argument("--facts", help="facts file (default: the shipped corpus/facts.json)")
    b.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    b.add_argument("--out-dir", help="where to write (default: beside --facts, else the current folder)")
    k = csub.add_parser("check", help="validate a corpus and print its statistics")
    k.add_argument("file")
    i = sub.add_parser("inspect", help="show how the hidden state carries context from turn to turn", **_doc(
        "Show how the hidden state carries context from turn to turn: each reply from the carried "
        "and from a zeroed state, norms, cosines and gates; or the units that are on over a "
        "phrase (--units); or a linear probe of the referent (--probe); or who the model's own "
        "referent head reads 'he' and 'she' as (--readout).",
        'contextbot inspect "Who is Tom Cruise?" "Where does he live?"',
        'contextbot inspect --units "Tom Cruise" --plot units.png',
        "contextbot inspect --probe --checkpoint checkpoints/gru.safetensors "
        "--checkpoint checkpoints/lstm.safetensors"))
    i.add_argument("questions", nargs="*", metavar="QUESTION",
                   help="one conversation, a turn per argument (default: the seed's Tom Cruise / Megan Fox dialogue)")
    i.add_argument("--checkpoint", action="append",
                   help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors); "
                        "with --probe, repeat it to compare cells")
    i.add_argument("--script", help="a file of questions, one per line")
    i.add_argument("--plot", metavar="OUT.png", help="write a figure (.png, .svg or .pdf)")
    i.add_argument("--json", action="store_true", help="print the whole trace as JSON")
    mode = i.add_mutually_exclusive_group()
    mode.add_argument("--units", metavar="TEXT",
                      help="find the hidden units that are on over TEXT and show where they fire again")
    mode.add_argument("--probe", action="store_true",
                      help="how well a linear probe reads the referent from the state, by turns since the introduction")
    mode.add_argument("--readout", action="store_true",
                      help="who the referent head reads 'he' and 'she' as, per character, carried and zeroed")
    i.add_argument("--conversations", type=int,
                   help="--probe: generated conversations per checkpoint, a third held out (default 600)")
    return p


def _train_flags(parser: argparse.ArgumentParser) -> None:
    """`contextbot train`'s flags: one for each field of TrainOptions, with its help and default."""
    from .train.options import add_flags
    add_flags(parser)


def cmd_train(args) -> int:
    from .files import check_writable
    from .train.loop import main_json, train
    from .train.options import from_args
    o = from_args(args)
    o.validate()  # every flag, --out against the files training reads, before anything is written
    check_writable(args.out)  # now, not when the first checkpoint is written
    summary = train(o)
    if o.json and summary is not None:  # under torchrun, only rank 0 has a summary to print
        main_json(summary)
    return 0


def _check_sampling_flags(args) -> None:
    """ask's --temperature, --top-k and --seed, each refused in one line (ChatSession checks them too)."""
    import math

    from .chat import ChatSession
    t, low = args.temperature, ChatSession.MIN_TEMPERATURE
    if not math.isfinite(t):
        raise ContextbotError(f"--temperature must be a finite number, not {t:g}")
    if t < 0:
        raise ContextbotError(f"--temperature must be 0 (greedy) or more, not {t:g}")
    if 0 < t < low:
        raise ContextbotError(f"--temperature {t:g} would overflow the logits: give 0 (greedy) "
                              f"or at least {low:g}")
    if args.top_k is not None and args.top_k < 1:
        raise ContextbotError(f"--top-k must be at least 1, not {args.top_k}")
    if not 0 <= args.seed < 2**64:
        raise ContextbotError(f"--seed must be from 0 to 2**64 - 1 (64 bits), not {_short(args.seed)}")


def _short(n: int) -> str:
    """An integer for an error message: a 300-digit one is shown by its size."""
    text = str(n)
    return text if len(text) <= 24 else f"a number of {len(text)} digits"


def _line_editing() -> None:
    """At an interactive prompt, give input() line editing and history, where Python has readline."""
    import importlib
    try:
        importlib.import_module("readline")  # importing it is what makes input() use it
    except ImportError:  # Windows, or a Python built without it
        pass


def cmd_ask(args) -> int:
    from .chat import ChatSession
    from .text.terminal import visible
    _check_sampling_flags(args)  # before the checkpoint is loaded
    session = ChatSession.load(args.checkpoint, carry=not args.no_carry,
                               temperature=args.temperature, top_k=args.top_k, seed=args.seed)

    def reply(q: str) -> None:
        try:
            print(visible(session.ask(q)), flush=True)  # no escape sequences from a stranger's model
        except ValueError as exc:
            raise ContextbotError(str(exc)) from None

    if args.questions:
        for q in args.questions:
            reply(q)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        _line_editing()
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 become U+FFFD, not a traceback
    while True:
        if interactive:
            try:
                q = input("you> ")
            except EOFError:
                print()
                return 0
            try:
                reply(q)
            except ContextbotError as exc:  # at the prompt, a bad question must not end the conversation
                print_error(exc)
        else:
            q = sys.stdin.readline()
            if not q:
                return 0
            reply(q.rstrip("\n"))  # a script's bad line stops it: exit 2, like any other bad input


def cmd_chat(args) -> int:
    """Open the Textual app. What can be checked before the screen switches is checked here, in
    the shell, like a typo in any other command: a path that does not exist, a directory, a
    device or a pipe (which `ask` refuses too), a file that cannot be read, and a session with no
    terminal to draw on or read keys from (the UI would wait forever). A file that exists but is
    damaged is reported on screen while loading, and again here (exit 2) once the user quits.
    With --web, the same checks, then a web server (contextbot/ui/web.py) instead of the app."""
    from pathlib import Path

    from .paths import default_checkpoint
    from .ui import web
    if not args.web and (args.port is not None or args.host is not None):
        raise ContextbotError(f"{'--port' if args.port is not None else '--host'} needs --web")
    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    try:
        if path.is_dir():
            raise ContextbotError(f"{path}: is a directory, not a checkpoint file")
        if not path.exists():
            raise ContextbotError(f"{path}: no such checkpoint")
        if not path.is_file():  # /dev/zero or a pipe would be read forever
            raise ContextbotError(f"{path}: not a regular file")
        with open(path, "rb"):
            pass
    except OSError as exc:  # a folder on the way that may not be read, a file that may not be
        raise ContextbotError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if args.web:  # a server: no terminal needed; each browser tab runs `chat` under the web driver
        return web.serve(path, web.DEFAULT_HOST if args.host is None else args.host,
                         web.DEFAULT_PORT if args.port is None else args.port)
    # Textual reads keys from stdin and draws on stderr. stdout is checked as well, so that
    # `contextbot chat > file` (or `| less`) is refused like `< file`, rather than half working.
    # A tab of `chat --web` has pipes, and Textual's web driver, instead.
    if not web.served_by_web() and not all(_is_terminal(stream) for stream in (sys.stdin, sys.stdout, sys.stderr)):
        raise ContextbotError("chat needs a terminal; use 'contextbot ask'")
    from .ui.app import ChatApp
    app = ChatApp(path)
    app.run()
    if app.load_error:
        raise ContextbotError(app.load_error)  # the app made it `visible`
    return 0


def _is_terminal(stream) -> bool:
    """Whether `stream` is an open terminal (not a file, a pipe, /dev/null, or missing)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def cmd_eval(args) -> int:
    from .analysis.report import run_eval
    if not 1 <= args.per_category <= MAX_PER_CATEGORY:
        raise ContextbotError(f"--per-category must be from 1 to {MAX_PER_CATEGORY}, "
                              f"not {_short(args.per_category)}")
    return run_eval(args)


def cmd_corpus(args) -> int:
    from .text import corpus
    if args.corpus_command == "build":
        train, valid = corpus.build(args.facts, seed=args.seed, out_dir=args.out_dir)
        for path in (train, valid):
            s = corpus.check(path)
            print(f"wrote {path}: {s.conversations} conversations, {s.turns} turns, "
                  f"{s.characters} characters")
        return 0
    if args.corpus_command == "check":
        s = corpus.check(args.file)
        alphabet = "".join(sorted(s.alphabet))
        print(f"{args.file}: ok")
        print(f"conversations  {s.conversations}")
        print(f"turns          {s.turns}")
        print(f"characters     {s.characters}")
        print(f"alphabet       {len(alphabet)} characters: {alphabet!r}")
        print(f"sha256         {s.sha256}")
        return 0
    raise ContextbotError("corpus needs an action: build or check (see 'contextbot corpus --help')")


def cmd_inspect(args) -> int:
    from .analysis.inspector import run
    return run(args)


def print_error(exc: ContextbotError) -> None:
    """The one-line form every user error takes on stderr. A message may quote a path or a line of
    a file the user gave: `visible` keeps it one line and free of escape sequences."""
    from .text.terminal import visible
    print(f"contextbot: error: {visible(str(exc))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version have printed; errors raise ContextbotError
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            parser.print_help()
            return 2
        return {"train": cmd_train, "ask": cmd_ask, "eval": cmd_eval,
                "corpus": cmd_corpus, "chat": cmd_chat, "inspect": cmd_inspect}[args.command](args)
    except ContextbotError as exc:
        print_error(exc)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    sys.exit(main())
