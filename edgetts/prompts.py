"""Prompts: the model's own chat template for instruct models, few-shot text for base models.

Both ask for the format the search relies on: reasoning steps separated by a blank line (the step
separator the PRM scores at) and the final answer in ``\\boxed{}`` (what grading extracts).
"""

from __future__ import annotations

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


def render_chat(template: str, messages: list[dict[str, str]], bos: str = "", eos: str = "") -> str:
    """Render a GGUF chat template (Jinja) the way Hugging Face tokenizers do."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


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
    as plain text before the question instead of the math few-shot examples.
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
        rendered = render_chat(chat_template, messages, bos=bos, eos=eos)
    if rendered.count(_QUESTION_MARK) != 1:
        raise ValueError("the chat template does not show the question exactly once, as written")
    head, tail = rendered.split(_QUESTION_MARK)
    spaces = len(head) - len(head.rstrip(" "))
    head, question = head[: len(head) - spaces], head[len(head) - spaces :] + question
    return [(part, trusted) for part, trusted in ((head, True), (question, False), (tail, True)) if part]
