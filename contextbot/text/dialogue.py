"""Conversations about the people in facts.json, generated with their right answers.

One generator serves both the training corpus (`contextbot corpus build`) and the evaluation
(`contextbot eval`), so both agree on what a right answer is. The rule that the bot must learn:

- "he" means the latest man introduced, "she" the latest woman;
- after an unknown name ("Who is Qwerty Zed?"), both pronouns mean that unknown person and the
  answer is "I don't know." until someone known is introduced;
- a pronoun with nobody of that gender in context gets "Who do you mean?";
- small talk in between changes nothing.

Question phrasings come in two lists: `TRAIN_QUESTIONS` appear in the corpus, `HELD_OUT_QUESTIONS`
never do; the evaluation uses the latter to measure generalisation to unseen phrasings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .facts import ATTRIBUTES, PRONOUN_FORMS, Entity, name_key
from .turns import conversation

# {s} subject pronoun (he/she), {p} possessive (his/her), {o} object (him/her).
TRAIN_QUESTIONS = {
    "profession": ["What is {p} profession?", "What does {s} do?", "What is {p} job?",
                   "What does {s} do for a living?", "What is {p} occupation?", "What does {s} work as?",
                   "What's {p} profession?", "What work does {s} do?", "What is {s} by profession?",
                   "What is {p} line of work?", "What's {p} occupation?", "What does {s} do for work?"],
    "city": ["Where does {s} live?", "Where {s} lives?", "Where is {p} home?",
             "In which city does {s} live?", "Where does {s} live these days?", "What city is {p} home?",
             "Where's {p} home?", "Where is {s} based?", "Which town does {s} live in?",
             "Where does {s} reside?", "What city does {s} call home?", "Where is {s} staying?",
             "Where is {s} residing?", "Where is {s} settled?", "Where does {s} make {p} home?"],
    "spouse": ["Whom did {s} marry?", "Whom {s} married?", "Who is {p} spouse?",
               "Is {s} married?", "Who is {p} partner?", "Whom is {s} married to?",
               "Who's {p} spouse?", "To whom is {s} married?", "Who is {s} with?",
               "Has {s} got a spouse?", "Who is {p} other half?", "Who did {s} wed?"],
    "born": ["When was {s} born?", "What year was {s} born?", "What is {p} year of birth?",
             "In which year was {s} born?", "How old is {s}?", "When {s} was born?",
             "What's {p} year of birth?", "Which year was {s} born in?", "What is {p} date of birth?",
             "What is {p} age?", "What is {p} birth date?", "How old is {s} now?",
             "When is {p} birthday?", "What is {p} birthdate?", "What was {p} year of birth?"],
    "nationality": ["Where is {s} from?", "What is {p} nationality?", "Which country is {s} from?",
                    "What nationality is {s}?", "Where {s} is from?", "What is {p} country?",
                    "What's {p} nationality?", "Which nation is {s} from?", "Where does {s} hail from?",
                    "What is {p} homeland?", "Where is {s} originally from?", "What's {p} country?"],
}
HELD_OUT_QUESTIONS = {
    "profession": ["What's {p} job?", "What kind of work does {s} do?"],
    "city": ["Which city does {s} live in?", "Where is {s} living?"],
    "spouse": ["Who did {s} marry?", "Who is {s} married to?"],
    "born": ["In what year was {s} born?", "What is {p} birth year?"],
    "nationality": ["What country is {s} from?", "Where does {s} come from?"],
}
INTRO_FORMS = ["Who is {name}?", "Tell me about {name}.", "Who's {name}?", "Do you know {name}?",
               "What about {name}?"]
COMPOUND_FORMS = ["Who is {name}, and {q}", "Who is {name}. {Q}", "Who is {name}? {Q}",
                  "Tell me about {name}, and {q}", "Who is {name} and {q}"]
SMALL_TALK = [
    ("Hello!", "Hello! Ask me about someone."),
    ("Hi.", "Hi there!"),
    ("How are you?", "I am fine, thank you."),
    ("Thanks!", "You are welcome."),
    ("Thank you.", "You are welcome."),
    ("Interesting.", "I think so too."),
    ("Tell me a joke.", "I would tell you one about vanishing gradients, but it fades."),
    ("Good morning!", "Good morning!"),
    ("Nice.", "Glad you like it."),
    ("OK.", "OK."),
    ("What is your name?", "I am contextbot."),
    ("Cool!", "Indeed."),
]
UNKNOWN_PERSON = "I don't know who that is."
UNKNOWN_FACT = "I don't know."
NOBODY = "Who do you mean?"

_SYLLABLES = ["ka", "lo", "mi", "zu", "ber", "tan", "qua", "rix", "vel", "dor", "pim", "sho", "gra",
              "nel", "fyn", "wes", "orb", "ule", "tsi", "mak", "jo", "haz", "kev", "lin", "zed", "po"]


def fill(template: str, pronoun: str) -> str:
    return template.format(**PRONOUN_FORMS[pronoun])


def unknown_name(rng: random.Random, known: list[Entity]) -> str:
    """A made-up name that is not in facts.json; sometimes a known first name with a new surname,
    so that the bot has to read the whole name. Not a known name in any case (facts.name_key):
    "KA ZED" is not made up if "Ka Zed" is known."""
    known_names = {name_key(e.name) for e in known}
    while True:
        def word() -> str:
            return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))).capitalize()
        first = rng.choice(known).name.split()[0] if rng.random() < 0.2 else word()
        name = f"{first} {word()}"
        if name_key(name) not in known_names:
            return name


def add_noise(text: str, rng: random.Random, shout: float = 0.0) -> str:
    """Case and punctuation noise as people type it: 'who is tom cruise', 'WHERE DOES SHE LIVE'.

    `shout` is an extra share of all-capitals on top of the one in seven that the other kinds of
    noise leave them: capitals change every letter of a question, so a model that sees too few of
    them reads 'HOW OLD IS SHE' as another question (see `training_conversation`).
    """
    # With no shout, no extra draw: the eval's noisy conversations stay the ones they always were.
    choice = 1 if shout and rng.random() < shout else rng.randrange(7)
    if choice == 0:
        text = text.lower()
    elif choice == 1:
        text = text.upper()
    elif choice in (2, 3):
        words = text.split(" ")
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(words))
            words[i] = words[i].lower() if words[i][:1].isupper() else words[i].capitalize()
        text = " ".join(words)
    if rng.random() < 0.5 and text[-1:] in "?.!":
        text = text[:-1] + rng.choice(["", "", "??", ".", "?!", " ?"])
    return text


@dataclass
class Turn:
    """One question and its right answer, with what a reply must and must not contain."""

    question: str
    answer: str
    kind: str
    expected: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    pronoun: str | None = None
    attribute: str | None = None
    template: str | None = None  # the phrasing a pronoun question was made from, e.g. "Where does {s} live?"


@dataclass
class Talk:
    """Builds one conversation turn by turn while tracking who each pronoun means."""

    rng: random.Random
    entities: list[Entity]
    questions: dict = field(default_factory=lambda: TRAIN_QUESTIONS)
    noise: float = 0.0
    shout: float = 0.0  # extra share of all-capitals among the noisy questions (see add_noise)
    turns: list[Turn] = field(default_factory=list)
    slots: dict = field(default_factory=lambda: {"he": None, "she": None})
    in_play: list[Entity] = field(default_factory=list)

    def _q(self, text: str) -> str:
        return add_noise(text, self.rng, self.shout) if self.rng.random() < self.noise else text

    def _add(self, turn: Turn) -> Turn:
        self.turns.append(turn)
        return turn

    def _meet(self, e: Entity) -> None:
        self.slots[e.pronoun] = e
        if e not in self.in_play:
            self.in_play.append(e)

    def intro(self, e: Entity, form: str | None = None) -> Turn:
        form = form or self.rng.choice(INTRO_FORMS)
        self._meet(e)
        return self._add(Turn(self._q(form.format(name=e.name)), e.intro(), "intro",
                              expected=(e.nationality, e.profession)))

    def compound(self, e: Entity, attribute: str, form: str | None = None) -> Turn:
        form = form or self.rng.choice(COMPOUND_FORMS)
        q = fill(self.rng.choice(self.questions[attribute]), e.pronoun)
        text = form.format(name=e.name, q=q[0].lower() + q[1:], Q=q)
        self._meet(e)
        return self._add(Turn(self._q(text), e.compound_answer(attribute), "compound",
                              expected=(e.profession, e.fact(attribute)),
                              forbidden=self._others(e, attribute), pronoun=e.pronoun,
                              attribute=attribute))

    def unknown(self, name: str | None = None) -> Turn:
        name = name or unknown_name(self.rng, self.entities)
        self.slots = {"he": "unknown", "she": "unknown"}
        form = self.rng.choice(INTRO_FORMS[:2])
        return self._add(Turn(self._q(form.format(name=name)), UNKNOWN_PERSON, "unknown",
                              expected=("don't know",),
                              forbidden=tuple(e.profession for e in self.in_play)))

    def small_talk(self) -> Turn:
        q, a = self.rng.choice(SMALL_TALK)
        return self._add(Turn(self._q(q), a, "small_talk", expected=(a,)))

    def ask(self, pronoun: str, attribute: str | None = None, template: str | None = None) -> Turn:
        """A question about whoever `pronoun` means now."""
        attribute = attribute or self.rng.choice(ATTRIBUTES)
        template = template or self.rng.choice(self.questions[attribute])
        text = self._q(fill(template, pronoun))
        who = self.slots[pronoun]
        everyone = tuple(e.fact(attribute) for e in self.in_play)
        if who is None:
            turn = Turn(text, NOBODY, "nobody", expected=(NOBODY,), forbidden=everyone)
        elif who == "unknown":
            turn = Turn(text, UNKNOWN_FACT, "unknown_fact", expected=("don't know",),
                        forbidden=everyone)
        else:
            turn = Turn(text, who.answer(attribute), "fact", expected=(who.fact(attribute),),
                        forbidden=self._others(who, attribute))
        turn.pronoun, turn.attribute, turn.template = pronoun, attribute, template
        return self._add(turn)

    def _others(self, who: Entity, attribute: str) -> tuple[str, ...]:
        """Facts of the other people in play that differ from the right one: a reply that
        contains one of them has mixed people up."""
        mine = who.fact(attribute)
        others = {e.fact(attribute) for e in self.in_play if e is not who}
        return tuple(sorted(x for x in others if x not in mine and mine not in x))


def training_conversation(rng: random.Random, entities: list[Entity], noise: float = 0.35,
                          shout: float = 0.3) -> list[Turn]:
    """One conversation of the training corpus: people introduced, small talk (0 to 3 turns in a
    row), questions about whoever "he" and "she" mean, unknown names and switches.

    Noise falls on 35% of questions, 30% of those all in capitals (it was 20%, and capitals one in
    seven of those): most of the shipped GRU's misses under noise were questions in capitals.
    """
    talk = Talk(rng, entities, noise=noise, shout=shout)
    if rng.random() < 0.3:
        talk.small_talk()
    if rng.random() < 0.2:
        talk.ask(rng.choice(["he", "she"]))
    for _ in range(rng.choice([1, 2, 2, 3, 3, 4])):
        if rng.random() < 0.12:
            talk.unknown()
            pronoun = rng.choice(["he", "she"])
        else:
            e = rng.choice(entities)
            pronoun = e.pronoun
            if rng.random() < 0.3:
                talk.compound(e, rng.choice(ATTRIBUTES))
            else:
                talk.intro(e)
        for _ in range(rng.randint(1, 3)):
            for _ in range(rng.choices([0, 1, 2, 3], weights=[4, 3, 2, 1])[0]):
                talk.small_talk()
            other = "she" if pronoun == "he" else "he"
            # With a man and a woman both known, ask about the earlier one half the time: the
            # readout must learn to pick the slot the pronoun names, not the latest person.
            p_other = 0.5 if isinstance(talk.slots[other], Entity) else 0.3
            talk.ask(other if rng.random() < p_other else pronoun)
    return talk.turns


def phrasing(template: str) -> str:
    """A question template for people to read: "Where is {s} living?" -> "Where is he/she living?"."""
    return template.format(s="he/she", p="his/her", o="him/her")


def format_conversation(turns: list[Turn]) -> str:
    """The corpus format (turns.py): `Q: ...` and `A: ...` lines, ending with a newline."""
    return conversation((t.question, t.answer) for t in turns)
