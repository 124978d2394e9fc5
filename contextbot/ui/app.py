"""`ChatApp`: the conversation on the left, the live hidden state on the right.

How the pieces talk (the one rule: only the event-loop thread touches widgets):

    Input.Submitted ──> _reply_worker (a thread: @work(thread=True))
                            │ run_turn(...) calls on_progress after each character
                            ▼
                        post_message(ReplyProgress)   (thread-safe; stale ones collapse)
                            │
    on_reply_progress <─────┘  (event-loop thread: updates the reply and the panel)
    on_reply_finished <── post_message(ReplyFinished) at the end of the turn

Before the reply, for a checkpoint with the referent head, the worker also posts a PromptProgress
per character of the question: who "he" and "she" mean as the state reads it (the Memory section;
each ReplyProgress's newest tick carries the same for the reply).

The model loads the same way (`_load_model` posts ModelLoaded or ModelFailed), so the window
appears at once with a loading indicator. While a reply streams, `busy` locks the input and
greys out the keys that would change the state under the worker's feet; Escape sets an Event
that the worker polls after every character.

What the model says (and what a damaged file's error message says) reaches the screen only
through `visible` (text/terminal.py): the widgets of conversation.py apply it, and so does every
`notify` here, which also never parses its message as markup.
"""

from __future__ import annotations

import threading
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState, get_current_worker

from ..analysis.readout import Readout
from ..chat import ChatSession
from ..text.terminal import clean_question, visible
from . import transcript as transcript_io
from .conversation import BotReply, ChatLog
from .help import HelpScreen
from .history_input import HistoryInput
from .messages import (ComparisonReady, ModelFailed, ModelLoaded, PromptProgress, ReplyFinished,
                       ReplyProgress, ReplyRefused)
from .panel import CarryoverTable, MemoryView, StatePanel
from .status import StatusLine
from .streaming import Memory, run_turn, zero_memory, zeroed_answer
from .timeline import Timeline

#: Actions that need a loaded model (greyed out before it loads, or when it failed to).
NEEDS_MODEL = {"forget", "toggle_carry", "compare", "save"}
#: Actions greyed out while a reply streams: they would change the state, or the reply's line,
#: under the worker's feet.
NOT_WHILE_BUSY = NEEDS_MODEL | {"clear"}


class ChatApp(App[None], inherit_bindings=False):
    """The contextbot terminal UI (`contextbot chat`)."""

    TITLE = "contextbot"
    ENABLE_COMMAND_PALETTE = False  # every command is a key in the footer

    # The layout only; every widget styles itself in its own DEFAULT_CSS.
    CSS = """
    #main { height: 1fr; }
    #chat-column { width: 1fr; }
    ChatLog { height: 1fr; }
    HistoryInput { margin: 0 1; }
    StatePanel { width: 45%; max-width: 90; border-left: vkey $foreground 20%; }
    Screen.-narrow StatePanel { width: 38; }
    Screen.-narrow SectionTitle { margin: 0; }
    Screen.-narrow UnitHeatmap { height: 4; }
    Screen.-wide UnitHeatmap { height: 10; }
    Screen.-stacked #main { layout: vertical; }
    Screen.-stacked #chat-column { height: 1fr; width: 1fr; }
    Screen.-stacked StatePanel { width: 1fr; max-width: 100%; height: 40%; border-left: none;
                                 border-top: hkey $foreground 20%; }
    """

    # Below 70 columns the panel goes under the chat; up to 120 it is a fixed narrow column.
    HORIZONTAL_BREAKPOINTS = [(0, "-stacked"), (70, "-narrow"), (120, "-wide")]

    # In footer order (inherit_bindings=False: App's own ctrl+q would otherwise come first).
    BINDINGS = [
        Binding("ctrl+r", "forget", "Forget", priority=True,
                tooltip="Zero the hidden state; the log stays, marked with a divider."),
        Binding("ctrl+t", "toggle_carry", "Memory", priority=True,
                tooltip="Carry the memory across turns, or start every turn from zero."),
        Binding("ctrl+d", "compare", "Compare", priority=True,
                tooltip="Ask the last question again from a zeroed state, side by side."),
        Binding("ctrl+s", "save", "Save", priority=True,
                tooltip="Save the session as JSON in the current directory."),
        Binding("ctrl+l", "clear", "Clear", priority=True),
        Binding("escape", "stop", "Stop", priority=True),
        Binding("f1", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "help_quit", show=False, system=True),  # "press ctrl+q to quit"
    ]

    busy: reactive[bool] = reactive(False, init=False)
    """True while a worker is generating: the input is locked and the stateful keys greyed out."""

    def __init__(self, checkpoint: str | Path | None = None):
        """`checkpoint`: a path, or None for $CONTEXTBOT_CHECKPOINT / checkpoints/gru.safetensors."""
        super().__init__()
        self.checkpoint_path = checkpoint
        self.session: ChatSession | None = None
        self.load_error: str | None = None
        self.timeline = Timeline()
        self.transcript = transcript_io.Transcript()
        self.turn = 0  # number of the turn being (or last) generated
        self.last_saved: Path | None = None
        self._stop = threading.Event()  # set by Escape / quit; polled by the reply worker
        self._reply: BotReply | None = None
        self._last_end = None  # the state that ended the previous turn (for the cosine)
        self.readout: Readout | None = None  # the referent head's reader; None: no Memory section
        self.zero_memory: Memory | None = None  # what it reads in the all-zero state
        self._end_memory: tuple[int, Memory] | None = None  # (turn, reading) of the state now

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ChatLog(id="chat")
                yield HistoryInput(placeholder="Ask something, e.g. Who is Tom Cruise?  (F1: help)",
                                   id="question", disabled=True)
            yield StatePanel(id="panel")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ChatLog).loading = True
        self.query_one(StatePanel).loading = True
        self._show_status()
        self._load_model()

    # -- loading ----------------------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="load")
    def _load_model(self) -> None:
        """Thread: read the checkpoint, then post the session (or the reason it failed)."""
        try:
            session = ChatSession.load(self.checkpoint_path)
            readout = Readout.of(session.checkpoint)  # None without the referent head
            zero = zero_memory(session, readout) if readout is not None else None
        except Exception as exc:  # a damaged file can upset any library on the way in
            self._post(ModelFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        else:
            self._post(ModelLoaded(session, readout, zero))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.session = message.session
        self.readout, self.zero_memory = message.readout, message.zero
        chat, panel = self.query_one(ChatLog), self.query_one(StatePanel)
        chat.loading = panel.loading = False
        panel.setup(self.session, self.readout.labels if self.readout is not None else None)
        self._show_memory()
        chat.add_note("Ask about someone, then ask a follow-up with “he” or “she”. "
                      "F1 explains the panel.")
        box = self.query_one(HistoryInput)
        box.disabled = False
        box.focus()
        self._show_status()
        self.refresh_bindings()

    def on_model_failed(self, message: ModelFailed) -> None:
        # `contextbot chat` repeats it on stderr after quitting; it may quote the file's bytes.
        self.load_error = visible(message.error)
        chat, panel = self.query_one(ChatLog), self.query_one(StatePanel)
        chat.loading = panel.loading = False
        panel.display = False  # nothing to show: give the message the whole width
        chat.add_note(f"contextbot: error: {message.error}", error=True)
        chat.add_note("Start again with another checkpoint: contextbot chat --checkpoint PATH "
                      "(train one with: contextbot train --out PATH). ctrl+q quits.")
        self._show_status(activity="no model loaded")

    # -- a turn -----------------------------------------------------------------------------------
    def on_input_submitted(self, event: HistoryInput.Submitted) -> None:
        if self.session is None or self.busy:
            return
        box = self.query_one(HistoryInput)
        try:
            question = clean_question(event.value)  # the session's own rules, checked up front
        except ValueError as exc:
            self.notify(visible(str(exc)), title="Not sent", severity="error", markup=False)
            return  # the text stays in the box, to be shortened
        if not question:
            box.value = ""
            return
        box.remember(event.value)
        box.value = ""
        self.turn += 1
        chat = self.query_one(ChatLog)
        chat.add_user(question)
        self._reply = chat.add_reply()
        self.timeline.begin_turn(carried=self.session.carry)
        self._stop.clear()
        self.busy = True
        self._reply_worker(self.turn, question, self._last_end)

    @work(thread=True, exit_on_error=False, group="reply")
    def _reply_worker(self, turn: int, question: str, previous_end) -> None:
        """Thread: generate the reply. Talks to the UI only by posting Messages."""
        worker = get_current_worker()
        try:
            result = run_turn(
                self.session, question,
                on_progress=lambda ticks: self._post(ReplyProgress(turn, ticks)),
                should_stop=lambda: self._stop.is_set() or worker.is_cancelled,
                previous_end=previous_end, readout=self.readout,
                on_prompt=lambda fed, memory: self._post(PromptProgress(turn, fed, memory)))
        except ValueError as exc:
            self._post(ReplyRefused(turn, str(exc)))
        else:
            self._post(ReplyFinished(turn, result))

    def on_prompt_progress(self, message: PromptProgress) -> None:
        if message.turn != self.turn or self._reply is None:
            return
        self.query_one(MemoryView).show(message.memory, "reading the question", message.fed)

    def on_reply_progress(self, message: ReplyProgress) -> None:
        if message.turn != self.turn or self._reply is None:
            return
        self.timeline.set_live(message.ticks)
        reply = "".join(t.char for t in message.ticks)
        self._reply.show(reply)
        self.query_one(StatePanel).refresh_state(self.session, self.timeline, message.ticks[-1])
        if message.ticks and message.ticks[-1].memory is not None:
            self.query_one(MemoryView).show(message.ticks[-1].memory, "replying", reply)

    def on_reply_finished(self, message: ReplyFinished) -> None:
        r = message.result
        self.timeline.set_live(r.ticks)
        self.timeline.commit()
        self._last_end = r.end_state
        r = r.slim()  # the timeline keeps the recent ticks; the transcript needs only the norms
        entry = self.transcript.add(r)
        if self._reply is not None:
            note = "(stopped)" if r.stopped else ("(empty reply)" if not r.reply else "")
            self._reply.show(r.reply, streaming=False, note=note)
        panel = self.query_one(StatePanel)
        panel.query_one(CarryoverTable).add(message.turn, r, entry.memory_zeroed_before)
        panel.refresh_state(self.session, self.timeline)
        if r.memory_out is not None:
            kind = "reset" if entry.memory_zeroed_before else ("turn" if r.carry else "off")
            panel.query_one(MemoryView).add_turn(message.turn, kind, r.memory_out)
            self._end_memory = (message.turn, r.memory_out)
        self._show_memory()
        self.busy = False

    def on_reply_refused(self, message: ReplyRefused) -> None:
        if self._reply is not None:
            self._reply.remove()
            self._reply = None
        self.notify(visible(message.error), title="Not sent", severity="error", markup=False)
        self.busy = False

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that died of a bug: say so on screen and unlock, rather than crash."""
        if event.state == WorkerState.ERROR and event.worker.group in ("reply", "compare"):
            self.query_one(ChatLog).add_note(f"internal error: {event.worker.error!r}", error=True)
            self.busy = False

    # -- keys ---------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, ModalScreen) and action != "quit":
            return False  # the help screen handles its own keys
        if action == "stop":
            return self.busy  # hidden (and Escape passes on) unless a reply is streaming
        if action in NEEDS_MODEL and self.session is None:
            return None  # shown, greyed out
        if action in NOT_WHILE_BUSY and self.busy:
            return None
        if action == "compare" and not self._can_compare():
            return None  # nothing asked yet, or the memory was zeroed since
        return True

    def _can_compare(self) -> bool:
        """ctrl+d compares the carried answer to the last question with a zeroed state's. Before
        any question there is none; after ctrl+r the memory that answered it is gone, so there is
        nothing to compare until the next question is asked."""
        return self.transcript.last() is not None and not self.transcript.pending_reset

    def watch_busy(self, busy: bool) -> None:
        box = self.query_one(HistoryInput)
        box.disabled = busy
        if not busy:
            box.focus()
        self._show_status(activity="replying… (Escape stops)" if busy else "")
        self.refresh_bindings()

    def action_forget(self) -> None:
        """ctrl+r: zero the state. The conversation stays on screen, marked by a divider."""
        self.session.reset()
        self._end_memory = None
        self.timeline.mark_reset()
        self.transcript.mark_reset()
        self.query_one(ChatLog).add_divider("memory zeroed: the next turn starts from nothing")
        self.query_one(StatePanel).refresh_state(self.session, self.timeline)
        self._show_memory()
        self._show_status()
        self.refresh_bindings()  # ctrl+d greys out: nothing to compare until the next question

    def action_toggle_carry(self) -> None:
        """ctrl+t: carry the memory from turn to turn, or start every turn from zero."""
        self.session.carry = not self.session.carry
        self.query_one(ChatLog).add_divider(
            "memory on: turns carry the state" if self.session.carry
            else "memory off: every turn starts from zero")
        self._show_memory()
        self._show_status()

    def action_compare(self) -> None:
        """ctrl+d: the last question again, from a zeroed state, beside the answer it got."""
        entry = self.transcript.last()
        if entry is None or not self._can_compare():
            return
        self.busy = True
        self._compare_worker(entry.result.question, entry.result.reply, entry.result.carry)

    @work(thread=True, exit_on_error=False, group="compare")
    def _compare_worker(self, question: str, carried: str, carried_was_on: bool) -> None:
        """Thread: a stateless twin session answers; the conversation's state is untouched."""
        self._post(ComparisonReady(question, carried, carried_was_on,
                                   zeroed_answer(self.session, question)))

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self.query_one(ChatLog).add_comparison(message.question, message.carried,
                                               message.carried_was_on, message.zeroed)
        entry = self.transcript.last()
        if entry is not None and entry.result.question == message.question:
            entry.zeroed_reply = message.zeroed
        self.busy = False

    def action_save(self) -> None:
        """ctrl+s: the session as JSON, in a new file in the current directory. The log says
        where, with the full path (it stays in view; the notification fades)."""
        try:
            path = transcript_io.save(self.transcript, self.session)
        except OSError as exc:
            self.notify(visible(f"could not save: {exc.strerror or exc}"), severity="error",
                        markup=False)
            return
        self.last_saved = path = path.absolute()
        turns = len(self.transcript.entries)
        saved = f"saved {turns} turn{'' if turns == 1 else 's'} to {path}"
        self.query_one(ChatLog).add_note(saved)  # add_note shows it through `visible`
        self.notify(visible(saved), title="Saved", markup=False)

    def action_clear(self) -> None:
        """ctrl+l: clear the screen. The memory is untouched (ctrl+r forgets)."""
        self.query_one(ChatLog).clear()

    def action_stop(self) -> None:
        """Escape: stop the reply after the next character (the worker polls this Event)."""
        self._stop.set()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            # Before the model has loaded, the help that assumes a Memory section.
            self.push_screen(HelpScreen(memory=self.session is None or self.readout is not None))

    async def action_quit(self) -> None:
        self._stop.set()  # a streaming worker stops at its next character
        self.exit()

    # -- helpers ------------------------------------------------------------------------------------
    def _post(self, message) -> None:
        """post_message from a worker thread; after the app has closed there is no one to tell."""
        try:
            self.post_message(message)
        except RuntimeError:  # the event loop is already closed (quit mid-reply)
            pass

    def _show_memory(self) -> None:
        """The Memory section between turns: who he and she mean in the state the next turn
        starts from. That is the zero state after ctrl+r, before the first turn, and while the
        memory is off (every turn then starts from zero)."""
        if self.readout is None or self.session is None:
            return
        view = self.query_one(MemoryView)
        if not self.session.carry:
            view.show(self.zero_memory, "memory off: next turn from zero")
        elif self._end_memory is None:
            view.show(self.zero_memory, "zeroed by ctrl+r" if self.transcript.entries
                      else "the zero state: nothing said yet")
        else:
            turn, memory = self._end_memory
            view.show(memory, f"after turn {turn}")

    def _show_status(self, activity: str = "") -> None:
        status = self.query_one(StatusLine)
        if self.session is None:
            status.show(loaded=False, activity=activity)
        else:
            status.show(loaded=True, carry=self.session.carry, turns=self.turn,
                        context=self.session.chars_seen, activity=activity)

