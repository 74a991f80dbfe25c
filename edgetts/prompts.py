"""Prompts: the model's own chat template for instruct models, few-shot text for base models.

Both ask for the format the search relies on: reasoning steps separated by a blank line (the step
separator the PRM scores at) and the final answer in ``\\boxed{}`` (what grading extracts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

STEP_SEPARATOR = "\n\n"


def split_steps(text: str) -> list[str]:
    """A written solution's steps, cut where the policy cuts them (blank lines); never empty."""
    return [s for s in text.split(STEP_SEPARATOR) if s.strip()] or [text]


SYSTEM_PROMPT = (
    "Solve the math problem efficiently and clearly. Think step by step. "
    "Separate the steps with a blank line. "
    "End with: Therefore, the final answer is: $\\boxed{answer}$. "
    "where answer is just the final number or expression."
)

# Short worked examples in the exact step format, for base models without a chat template.
FEW_SHOT = [
    (
        "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?",
        "Tom starts with 3 * 4 = 12 apples.\n\n"
        "After eating 2, he has 12 - 2 = 10 apples.\n\n"
        "Therefore, the final answer is: $\\boxed{10}$.",
    ),
    (
        "A shirt costs $20 and is on sale for 25% off. What is the sale price in dollars?",
        "The discount is 20 * 0.25 = 5 dollars.\n\n"
        "The sale price is 20 - 5 = 15 dollars.\n\n"
        "Therefore, the final answer is: $\\boxed{15}$.",
    ),
    (
        "Sara reads 12 pages a day. How many days does she need for a 60-page book?",
        "She needs 60 / 12 = 5 days.\n\nTherefore, the final answer is: $\\boxed{5}$.",
    ),
]


# What a template's strftime_now (Hugging Face's) renders: a fixed day, so that a seeded run's
# prompt is the same every day (Llama 3.1's templates write it as "Today Date"; their own default).
TEMPLATE_DATE = datetime(2024, 7, 26)


class TemplateRefused(ValueError):
    """The chat template itself refused the messages (its ``raise_exception``)."""


class _GenerationBlock(Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}``: it marks the assistant's text
    for training masks, so for a prompt its body renders as written."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)  # the tag's own name
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def render_chat(template: str, messages: list[dict[str, str]], bos: str = "", eos: str = "") -> str:
    """Render a GGUF chat template (Jinja) the way Hugging Face tokenizers do.

    A template that cannot be rendered (bad syntax, an unknown helper, an unsafe operation) is a
    ValueError naming the problem: the caller's error, like a question the template refuses."""
    # the helpers and tags Hugging Face's renderer has, which templates written for it use
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )

    def raise_exception(message: str) -> None:
        raise TemplateRefused(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = TEMPLATE_DATE.strftime
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    except TemplateRefused:
        raise
    except Exception as exc:  # the template is the model file's code: 1/0 in it is its error too
        raise ValueError(f"the chat template cannot be rendered: {type(exc).__name__}: {exc}") from None


def render_messages(template: str, messages: list[dict[str, str]], bos: str = "", eos: str = "") -> str:
    """:func:`render_chat`, with a leading system message folded into the first user turn (its
    text, a blank line, the user's) when the template refuses it as it is (Gemma-2; Mistral's
    check that turns alternate). A refusal folding does not cure stands."""
    try:
        return render_chat(template, messages, bos, eos)
    except TemplateRefused:
        folded = _system_folded(messages)
        if folded is None:
            raise
    return render_chat(template, folded, bos, eos)


def _system_folded(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """``messages`` with the system message before the first user turn joined to that turn;
    None when they do not begin so."""
    if len(messages) < 2 or [m["role"] for m in messages[:2]] != ["system", "user"]:
        return None
    first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]


def few_shot_prompt(question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer:\n{a}\n\n\n" for q, a in FEW_SHOT)
    return f"{SYSTEM_PROMPT}\n\n\n{shots}Question: {question.strip()}\nAnswer:\n"


def build_prompt(
    question: str, chat_template: str | None, bos: str = "", eos: str = "", system: str | None = None
) -> str:
    """The full prompt text for ``question``; chat template if the model has one.

    ``system`` replaces the math instructions (code tasks, programs); see :func:`prompt_parts`.
    """
    return "".join(text for text, _ in prompt_parts(question, chat_template, bos, eos, system))


# Stands in for the question while the template renders, so the question's place in the prompt
# is known exactly. NUL bytes never occur in a chat template, and questions cannot carry them.
_QUESTION_MARK = "\x00edgetts-question\x00"


def prompt_parts(
    question: str, chat_template: str | None, bos: str = "", eos: str = "", system: str | None = None
) -> list[tuple[str, bool]]:
    """The prompt as ``(text, trusted)`` pieces: the template's own text is trusted, the
    question is not.

    The tokenizer reads special tokens (``<|im_start|>``...) only in trusted pieces, so a
    question that contains chat markers cannot close its turn and write the assistant's answer.
    Spaces just before the question go with it, so words tokenize as they would in one piece.
    ``system`` replaces the math instructions (code tasks, programs); a base model then gets it
    as plain text before the question instead of the math few-shot examples. A template with no
    system role gets it at the head of the user's turn (:func:`render_messages`), still trusted.
    """
    if "\x00" in question:
        raise ValueError("the question contains a NUL character")
    question = question.strip()
    if not chat_template:
        rendered = few_shot_prompt(_QUESTION_MARK) if system is None else f"{system}\n\n{_QUESTION_MARK}\n"
    else:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT if system is None else system},
            {"role": "user", "content": _QUESTION_MARK},
        ]
        rendered = render_messages(chat_template, messages, bos=bos, eos=eos)
    if rendered.count(_QUESTION_MARK) != 1:
        raise ValueError("the chat template does not show the question exactly once, as written")
    head, tail = rendered.split(_QUESTION_MARK)
    spaces = len(head) - len(head.rstrip(" "))
    head, question = head[: len(head) - spaces], head[len(head) - spaces :] + question
    return [(part, trusted) for part, trusted in ((head, True), (question, False), (tail, True)) if part]


# -- whole conversations and raw prompts (the server) -------------------------------------------

ROLES = ("system", "user", "assistant")


def _marker(i: int) -> str:
    """Stands in for message ``i``'s text while the template renders (see _QUESTION_MARK)."""
    return f"\x00edgetts-message-{i}\x00"


@dataclass(frozen=True)
class Conversation:
    """A chat as a client sent it: ``(role, text)`` turns ending with a user's. Every text is
    untrusted, the system prompt included: only the chat template's own text is special.

    With no system message, the math instructions (:data:`SYSTEM_PROMPT`) stand in for one, so a
    one-question conversation is the same prompt as :func:`prompt_parts` makes. A template with no
    system role gets the system text at the head of the first user turn (:func:`render_messages`).
    """

    messages: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("the conversation has no messages")
        for role, text in self.messages:
            if role not in ROLES:
                raise ValueError(f"unknown message role {role!r}; use one of {', '.join(ROLES)}")
            if "\x00" in text:
                raise ValueError(f"a {role} message contains a NUL character")
        if self.messages[-1][0] != "user":
            raise ValueError("the conversation must end with a user message (the question)")
        if not self.question.strip():
            raise ValueError("the last user message is empty")

    @property
    def question(self) -> str:
        """The last user message: what the PRM scores steps against and answers are read for."""
        return self.messages[-1][1]

    def parts(self, chat_template: str | None, bos: str = "", eos: str = "") -> list[tuple[str, bool]]:
        """The prompt as ``(text, trusted)`` pieces, like :func:`prompt_parts`, every message untrusted."""
        messages = [(role, text.strip()) for role, text in self.messages]
        if not chat_template:
            return _plain_conversation(messages)
        own_system = [] if any(role == "system" for role, _ in messages) else [("system", SYSTEM_PROMPT)]
        rendered = render_messages(
            chat_template,
            [{"role": r, "content": t} for r, t in own_system]
            + [{"role": role, "content": _marker(i)} for i, (role, _) in enumerate(messages)],
            bos=bos,
            eos=eos,
        )
        pieces: list[tuple[str, bool]] = []
        rest = rendered
        for i, (_, text) in enumerate(messages):
            mark = _marker(i)
            if rendered.count(mark) != 1 or mark not in rest:
                raise ValueError(
                    "the chat template does not show every message exactly once, in order, as written"
                )
            head, rest = rest.split(mark)
            # spaces just before a message go with it, as in prompt_parts
            spaces = len(head) - len(head.rstrip(" "))
            pieces += [(head[: len(head) - spaces], True), (head[len(head) - spaces :] + text, False)]
        pieces.append((rest, True))
        return _joined(pieces)


def _joined(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Empty pieces dropped and neighbours of the same trust joined (they tokenize as one text)."""
    out: list[tuple[str, bool]] = []
    for text, trusted in pieces:
        if not text:
            continue
        if out and out[-1][1] == trusted:
            out[-1] = (out[-1][0] + text, trusted)
        else:
            out.append((text, trusted))
    return out


def _plain_conversation(messages: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """A conversation for a base model (no chat template), in the few-shot prompt's format."""
    system = [text for role, text in messages if role == "system"]
    turns = [(role, text) for role, text in messages if role != "system"]
    if system:
        pieces: list[tuple[str, bool]] = [("\n\n".join(system), False), ("\n\n\n", True)]
    else:
        head, _ = few_shot_prompt(_QUESTION_MARK).split("Question: " + _QUESTION_MARK)
        pieces = [(head, True)]
    for role, text in turns:
        if role == "user":
            # the space goes with the question, as in prompt_parts
            pieces += [("Question:", True), (" " + text, False), ("\nAnswer:\n", True)]
        else:
            pieces += [(text, False), ("\n\n\n", True)]
    return _joined(pieces)


@dataclass(frozen=True)
class RawPrompt:
    """A prompt as text, with no template (``/v1/completions``): continued as written. The text
    is untrusted: chat markers in it are plain text, never special tokens."""

    text: str

    def __post_init__(self) -> None:
        if "\x00" in self.text:
            raise ValueError("the prompt contains a NUL character")
        if not self.text.strip():
            raise ValueError("the prompt is empty")

    @property
    def question(self) -> str:
        return self.text

    def parts(self, chat_template: str | None, bos: str = "", eos: str = "") -> list[tuple[str, bool]]:
        """One untrusted piece (the policy adds the model's BOS token if it wants one)."""
        return [(self.text, False)]


# What a search roots in: a question (the math prompt around it), a whole conversation, a raw prompt.
Prompt = str | Conversation | RawPrompt


def question_text(prompt: Prompt) -> str:
    """The question ``prompt`` asks: the text itself, or a conversation's (raw prompt's) own."""
    return prompt if isinstance(prompt, str) else prompt.question


def prompt_text(prompt: Prompt) -> str:
    """All the untrusted text ``prompt`` prefills (every turn of a conversation), for sizing
    it: a plan for a long chat that counted only its last question would think it free."""
    if isinstance(prompt, Conversation):
        return "\n".join(text for _, text in prompt.messages)
    return question_text(prompt)
