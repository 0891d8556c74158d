"""The demo's task family: label a customer-support ticket with one of five intents.

WHY this task: a migration demo must show a small model getting measurably better at a task
that a metric can check. SmolLM2-135M cannot learn broad coding in CPU minutes (pass@1 stayed
flat in the coding demo), but a closed label set is what the paper's classification task type
is, the `choice` metric checks it exactly, and the untuned model answers with a sentence that
names the wrong label or several labels (about chance) while a short LoRA teaches it the labels.

One seeded generator serves three users, so they cannot drift apart:
- data/build_demo.py writes the demo dataset (data/demo_tickets: a SMALL seed train split and a
  held-out test split);
- llamaduo.loop.standin_teacher writes new pairs of the same family when data_gen asks it;
- the tests.

Honesty rules built in: the test split's messages come from their own phrasing templates
(`TEST_TEMPLATES`), which neither the seed split nor the stand-in teacher ever uses, so a round
that scores well on the test split has learned to label phrasings it never saw, not to recall
them. The only time the stand-in writes a test prompt is on purpose, as a contaminated pair
that data_gen's decontamination must drop.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

LABELS = ("billing", "shipping", "login", "bug", "cancel")
CATEGORY = "support_tickets"
INSTRUCTION_HEAD = "Label this support ticket as billing, shipping, login, bug or cancel."


def instruction_for(message: str) -> str:
    """The user prompt of one row: the (short) task header, then the ticket."""
    return f"{INSTRUCTION_HEAD}\nTicket: {message}"


def message_of(instruction: str) -> str:
    """The ticket text of a prompt built by `instruction_for` (the whole text otherwise)."""
    head, sep, tail = instruction.partition("\nTicket: ")
    return tail if sep else instruction


# Phrasing templates per label. {slot}s are filled from FILLERS. The lists are split into
# templates for training data (seed split and stand-in teacher) and held-out test templates.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {month} invoice.",
        "Why is there an extra fee of {amount} on my bill?",
        "My card was billed {amount} but I only ordered one {item}.",
        "The invoice for {month} shows the wrong amount.",
        "Can you explain the {amount} charge on my statement?",
        "I paid {amount} on {day} and you charged me again.",
        "My payment of {amount} went through but the invoice still says unpaid.",
        "The price on my bill is higher than the {amount} I was quoted.",
        "Please send me a corrected invoice for {month}.",
        "There is a double charge of {amount} on my credit card.",
    ),
    "shipping": (
        "My {item} has not arrived yet and it was due on {day}.",
        "Where is my package? The tracking has not moved since {day}.",
        "The courier left my {item} at the wrong address.",
        "Can I change the delivery address for my {item} order?",
        "My parcel with the {item} arrived damaged.",
        "The delivery was promised for {day} but nothing came.",
        "How long does shipping to {city} usually take?",
        "The tracking number for my {item} does not work.",
        "My order was shipped to {city} instead of my home.",
        "The parcel says delivered on {day} but I never got it.",
    ),
    "login": (
        "I cannot sign in to my account since {day}.",
        "The password reset link you emailed me has expired.",
        "My password is not accepted even though I typed it right.",
        "I forgot my password and the reset email never came.",
        "The app keeps logging me out of my account.",
        "The two-factor code from my phone is rejected when I log in.",
        "My account got locked after I tried to log in from {city}.",
        "I changed my email address and now I cannot log in.",
        "The login page says my username does not exist.",
        "I am stuck on the sign-in screen after entering my code.",
    ),
    "bug": (
        "The app crashes when I open the {item} page.",
        "I get an error 500 when I press the save button.",
        "Search shows a blank screen since the update on {day}.",
        "Pictures of the {item} do not load on my phone.",
        "The checkout button does nothing when I tap it.",
        "The page freezes every time I scroll the {item} list.",
        "The website shows garbled text since {day}.",
        "The app closes by itself after the latest update.",
        "The price filter returns items that are not {item}s.",
        "Notifications arrive twice and the counter is wrong.",
    ),
    "cancel": (
        "Please cancel my subscription before it renews on {day}.",
        "I want to close my account and stop all future payments.",
        "Cancel my order for the {item}, I do not need it anymore.",
        "How do I end my membership before {month}?",
        "Stop my plan at the end of this month please.",
        "I would like to cancel the {item} I ordered on {day}.",
        "Please end my contract, I am moving to {city}.",
        "Do not renew my yearly plan, I want to quit.",
        "I no longer want the service, cancel it today.",
        "End my free trial now so I am not charged in {month}.",
    ),
}
TEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "You took {amount} from my account for a {item} I returned.",
        "My receipt says {amount} but the bank shows a bigger payment.",
        "I was billed for {month} although I paid in advance.",
        "The tax on this invoice looks wrong to me.",
    ),
    "shipping": (
        "The box with my {item} is still stuck in the warehouse.",
        "No one delivered my {item} to {city} on {day}.",
        "The driver never rang and took my parcel back.",
        "Can you ship my {item} faster? I need it by {day}.",
    ),
    "login": (
        "Each time I enter my password the screen says access denied.",
        "I lost the phone with my login codes and cannot get in.",
        "Your site does not recognise my username anymore.",
        "I typed the reset code from the email and still cannot sign in.",
    ),
    "bug": (
        "Since {day} the {item} page shows an error message.",
        "The map in the app stays grey and never loads.",
        "Clicking on the {item} photo makes the page freeze.",
        "The app crashes after the login screen on my tablet.",
    ),
    "cancel": (
        "I want to stop my subscription, please do not bill me in {month}.",
        "Please close my membership today, I am leaving.",
        "Terminate my plan, I found another provider in {city}.",
        "I changed my mind, cancel the {item} order.",
    ),
}
FILLERS: dict[str, tuple[str, ...]] = {
    "month": ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"),
    "amount": ("$12", "$19.99", "$45", "$7.50", "$120", "$33", "$64.20", "$250", "€15", "£40"),
    "item": ("lamp", "jacket", "blender", "headphones", "kettle", "backpack", "desk chair",
             "phone case", "printer", "sofa", "watch", "camera"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "city": ("Lisbon", "Oslo", "Lyon", "Denver", "Osaka", "Leeds", "Porto", "Graz", "Austin", "Turin"),
}
OPENERS = ("", "Hello, ", "Hi, ", "Hey there, ", "Good morning, ")
CLOSERS = ("", " Thanks.", " Please help.", " Thank you!", " This is urgent.")


@dataclass(frozen=True)
class Pair:
    """One labelled ticket: the user prompt and the reference answer (the label alone)."""

    instruction: str
    label: str


def fill(template: str, rng: random.Random) -> str:
    """The template with every {slot} drawn from FILLERS."""
    out = template
    for slot, values in FILLERS.items():
        while "{" + slot + "}" in out:
            out = out.replace("{" + slot + "}", rng.choice(values), 1)
    return out


def make_message(label: str, rng: random.Random, templates: dict[str, tuple[str, ...]]) -> str:
    """One ticket text of `label`: an opener, a filled template, a closer."""
    body = fill(rng.choice(templates[label]), rng)
    opener = rng.choice(OPENERS)
    if opener:
        body = body[0].lower() + body[1:] if not body.startswith("I ") else body
    return opener + body + rng.choice(CLOSERS)


def make_pairs(n: int, rng: random.Random, templates: dict[str, tuple[str, ...]],
               exclude: set[str] | None = None) -> list[Pair]:
    """`n` distinct pairs, the labels in turn (balanced), none whose prompt is in `exclude`."""
    seen = set(exclude or ())
    pairs: list[Pair] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct tickets from the templates")
        label = LABELS[len(pairs) % len(LABELS)]
        instruction = instruction_for(make_message(label, rng, templates))
        if instruction in seen:
            continue
        seen.add(instruction)
        pairs.append(Pair(instruction, label))
    return pairs


# The demo dataset: sizes and seeds (data/build_demo.py writes it; the stand-in regenerates the
# test prompts from the same call to plant contaminated pairs).
SEED_ROWS = 10        # round 1 trains on these only: two tickets per label
TEST_ROWS = 100       # held-out prompts (>= 60 for confidence intervals that can separate rounds)
DATA_SEED = 2026


def seed_pairs() -> list[Pair]:
    """The small seed split (train_sft)."""
    return make_pairs(SEED_ROWS, random.Random(DATA_SEED), TRAIN_TEMPLATES)


def test_pairs() -> list[Pair]:
    """The held-out test split (test_sft), from the test-only templates."""
    return make_pairs(TEST_ROWS, random.Random(DATA_SEED + 1), TEST_TEMPLATES)


def prompt_id_for(text: str) -> str:
    """sha256 of the stripped prompt (utf-8): the same rule as llamaduo.data.prompt_id_for,
    repeated so this module needs only the standard library (the stand-in imports it)."""
    return hashlib.sha256(str(text).strip().encode("utf-8")).hexdigest()


def to_row(pair: Pair) -> dict:
    """One row in the reference SFT schema (prompt, prompt_id, messages, category)."""
    return {
        "prompt": pair.instruction,
        "prompt_id": prompt_id_for(pair.instruction),
        "messages": [{"role": "user", "content": pair.instruction},
                     {"role": "assistant", "content": pair.label}],
        "category": CATEGORY,
    }


def to_jsonl(pairs: list[Pair]) -> str:
    return "".join(json.dumps(to_row(p), ensure_ascii=False) + "\n" for p in pairs)


def template_labels(message: str, templates: dict[str, tuple[str, ...]]) -> set[str]:
    """The labels whose templates can produce `message` (with any opener and closer): used by
    the tests to prove that test tickets and training tickets come from disjoint phrasings."""
    import re

    found = set()
    for label, tpls in templates.items():
        for tpl in tpls:
            body = re.escape(tpl)
            for slot in FILLERS:
                body = body.replace(re.escape("{" + slot + "}"), "(?:" + "|".join(map(re.escape, FILLERS[slot])) + ")")
            pattern = "(?:" + "|".join(map(re.escape, OPENERS)) + ")" + body + "(?:" + "|".join(map(re.escape, CLOSERS)) + ")"
            if re.fullmatch(pattern, message, flags=re.IGNORECASE):
                found.add(label)
    return found
