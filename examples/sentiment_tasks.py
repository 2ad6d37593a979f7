"""The demo's task set: short reviews to label positive or negative, and the reward.

Train and validation reviews differ, so the validation accuracy the demo reports measures what the
model learned, not what it memorised. The reward pays only for the right label as the answer's
first word: a reply that hedges ("positive or negative") or gives one label to everything earns
half the reviews at most.
"""

from __future__ import annotations

import re

POSITIVE = [
    "Loved it.",
    "Great food and friendly staff.",
    "Best purchase I made this year.",
    "Wonderful.",
    "The hotel was clean and the view was amazing.",
    "Works perfectly, highly recommend.",
    "Fantastic movie, I laughed the whole time.",
    "Superb service.",
    "My kids adore this game.",
    "Fast delivery and excellent quality.",
    "A delightful little cafe.",
    "Brilliant!",
    "The concert was unforgettable.",
    "Comfortable shoes, I wear them every day.",
    "Five stars.",
    "Such a pleasant surprise.",
    "The book was beautifully written.",
    "Happy with it.",
    "Everything went smoothly, thank you.",
    "Excellent value for money.",
    "I would gladly come back.",
    "Charming and cozy.",
    "The update made the app so much better.",
    "Perfect gift.",
    "Our guide was kind and funny.",
    "Tasty and fresh.",
    "Really impressed.",
    "The garden is lovely in spring.",
]
NEGATIVE = [
    "Hated it.",
    "Cold food and rude staff.",
    "Worst purchase I made this year.",
    "Terrible.",
    "The room was dirty and smelled bad.",
    "Broke after two days, avoid.",
    "Boring movie, I fell asleep.",
    "Awful service.",
    "My kids got bored in five minutes.",
    "Late delivery and poor quality.",
    "A gloomy, overpriced cafe.",
    "Disappointing!",
    "The concert was a mess.",
    "Uncomfortable shoes, they hurt my feet.",
    "One star.",
    "Such a waste of money.",
    "The book was dull and too long.",
    "Unhappy with it.",
    "Nothing worked, what a headache.",
    "Horrible value for money.",
    "I will never come back.",
    "Noisy and cramped.",
    "The update made the app so much worse.",
    "Useless gift.",
    "Our guide was rude and late.",
    "Stale and bland.",
    "Really annoyed.",
    "The garden was full of trash.",
]
VALIDATION_EVERY = 4
"""Every fourth review of each label is held out for validation."""


def _split(held_out: bool) -> list[dict[str, str]]:
    tasks = [
        {"review": review, "label": label}
        for label, reviews in (("positive", POSITIVE), ("negative", NEGATIVE))
        for index, review in enumerate(reviews)
        if (index % VALIDATION_EVERY == VALIDATION_EVERY - 1) == held_out
    ]
    return sorted(tasks, key=lambda task: (len(task["review"]), task["label"]))


def train_tasks() -> list[dict[str, str]]:
    return _split(held_out=False)


def validation_tasks() -> list[dict[str, str]]:
    return _split(held_out=True)


def reward(answer: str, label: str) -> float:
    """1.0 when the answer's first word is the label, else 0.0."""
    words = re.findall(r"[a-z]+", answer.lower())
    return 1.0 if words and words[0] == label else 0.0
