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


def build_parser() -> Parser:
    p = Parser(prog="contextbot", description="A recurrent language model that remembers who "
               "'he' and 'she' mean across chat turns.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    sub.add_parser("train", help="train a model on a corpus", flags=_train_flags)

    a = sub.add_parser("ask", help="ask questions; each argument is one turn of one conversation")
    a.add_argument("questions", nargs="*", metavar="QUESTION")
    a.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")
    a.add_argument("--no-carry", action="store_true", help="zero the state before every turn")
    a.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    a.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    a.add_argument("--seed", type=int, default=0, help="seed for sampling")

    ch = sub.add_parser("chat", help="chat in a terminal UI beside a live view of the hidden state")
    ch.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")

    e = sub.add_parser("eval", help="score context tracking by kind of conversation")
    e.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or checkpoints/gru.safetensors)")
    e.add_argument("--seed", type=int, help="conversation seed (default: one training never uses)")
    e.add_argument("--per-category", type=int, default=200, help="conversations per category (default 200)")
    e.add_argument("--facts", help="facts file (default corpus/facts.json)")
    e.add_argument("--valid", help="corpus for validation bits per character (default corpus/valid.txt)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")

    c = sub.add_parser("corpus", help="build or check a corpus")
    csub = c.add_subparsers(dest="corpus_command", metavar="ACTION", parser_class=Parser)
    b = csub.add_parser("build", help="write corpus/train.txt and valid.txt from a facts file")
    b.add_argument("--facts", help="facts file (default corpus/facts.json)")
    b.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    b.add_argument("--out-dir", help="where to write (default: beside the facts file)")
    k = csub.add_parser("check", help="validate a corpus and print its statistics")
    k.add_argument("file")
    i = sub.add_parser("inspect", help="show how the hidden state carries context from turn to turn")
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
    check_writable(args.out)  # now, not when the first checkpoint is written
    o = from_args(args)
    summary = train(o)
    if o.json and summary is not None:  # under torchrun, only rank 0 has a summary to print
        main_json(summary)
    return 0


def cmd_ask(args) -> int:
    from .chat import ChatSession, visible
    if args.temperature < 0:
        raise ContextbotError("--temperature must be 0 or more")
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
    """Open the Textual app. A path that does not exist fails here, in the shell, like a typo in
    any other command; a file that exists but is damaged is reported on screen while loading, and
    again here (exit 2) once the user quits."""
    from pathlib import Path

    from .paths import default_checkpoint
    from .ui.app import ChatApp
    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if not path.exists():
        raise ContextbotError(f"{path}: no such checkpoint")
    app = ChatApp(path)
    app.run()
    if app.load_error:
        raise ContextbotError(app.load_error)
    return 0


def cmd_eval(args) -> int:
    from .analysis.report import run_eval
    if args.per_category < 1:
        raise ContextbotError("--per-category must be at least 1")
    return run_eval(args)


def cmd_corpus(args) -> int:
    from .paths import DEFAULT_FACTS
    from .text import corpus
    if args.corpus_command == "build":
        train, valid = corpus.build(args.facts or DEFAULT_FACTS, seed=args.seed,
                                    out_dir=args.out_dir)
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
    """The one-line form every user error takes on stderr."""
    print(f"contextbot: error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
