"""Synthetic patient-style symptom descriptions for common conditions (fixed seed).

The texts are generated from a table of conditions and their typical symptoms, with varied wording,
order, severity and duration. They are synthetic: good for a demo, not for any medical use.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

CONDITIONS: dict[str, list[str]] = {
    "Common Cold": ["a runny nose", "sneezing", "a scratchy throat", "a mild cough", "a stuffy nose"],
    "Influenza": ["a high fever", "chills", "aching muscles", "exhaustion", "a dry cough"],
    "Migraine": ["a pounding headache on one side", "nausea", "sensitivity to light", "flashing lights in my vision",
                 "sensitivity to noise"],
    "Asthma": ["wheezing", "shortness of breath", "a tight chest", "coughing at night", "trouble breathing on stairs"],
    "Allergic Rhinitis": ["itchy eyes", "watery eyes", "sneezing fits", "an itchy nose", "a blocked nose in spring"],
    "Gastroenteritis": ["diarrhea", "vomiting", "stomach cramps", "a low fever", "no appetite"],
    "Urinary Tract Infection": ["burning when I pee", "needing to pee all the time", "cloudy urine",
                                "pain low in my belly", "strong-smelling urine"],
    "Type 2 Diabetes": ["constant thirst", "peeing a lot", "blurry vision", "cuts that heal slowly",
                        "tingling in my feet"],
    "Hypertension": ["headaches in the morning", "nosebleeds", "a pounding feeling in my neck", "dizziness",
                     "high readings on the home monitor"],
    "Eczema": ["itchy dry skin", "red patches in the folds of my elbows", "cracked skin", "skin that weeps",
               "rough patches behind my knees"],
    "Psoriasis": ["silvery scales on my elbows", "thick red plaques", "pitted nails", "a flaky scalp",
                  "stiff swollen joints"],
    "Acid Reflux": ["heartburn after meals", "a sour taste in my mouth", "burning in my chest when I lie down",
                    "burping", "food coming back up"],
    "Bronchitis": ["a chesty cough with mucus", "soreness in my chest", "tiredness", "a slight fever",
                   "wheezing when I cough"],
    "Sinusitis": ["pressure around my eyes", "thick yellow mucus", "pain in my cheeks", "a blocked nose",
                  "a reduced sense of smell"],
    "Anemia": ["constant tiredness", "pale skin", "shortness of breath on exertion", "cold hands",
               "a racing heart"],
    "Hypothyroidism": ["weight gain", "always feeling cold", "dry hair", "constipation", "slowness and fatigue"],
    "Chickenpox": ["itchy blisters all over", "a fever", "spots that crust over", "a headache", "tiredness"],
    "Conjunctivitis": ["a red eye", "sticky discharge from my eye", "gritty eyes", "crusty eyelids in the morning",
                       "watery eyes"],
    "Arthritis": ["stiff joints in the morning", "swollen knuckles", "aching knees", "joints that creak",
                  "less movement in my hips"],
    "Dengue": ["a sudden high fever", "severe pain behind my eyes", "joint and bone pain", "a skin rash",
               "bleeding gums"],
}

OPENINGS = ["I have had {s}", "For {d} I've been dealing with {s}", "Lately I keep getting {s}",
            "I am suffering from {s}", "My main problems are {s}", "Since {d} I've noticed {s}"]
DURATIONS = ["two days", "a week", "three weeks", "about a month", "the last few days", "yesterday"]
SEVERITY = ["It is mild but annoying.", "It is getting worse every day.", "It comes and goes.",
            "It is really affecting my sleep.", "I can barely work because of it.", ""]


def describe(symptoms: list[str], rng: random.Random) -> str:
    picked = rng.sample(symptoms, rng.randint(2, 4))
    listed = ", ".join(picked[:-1]) + " and " + picked[-1]
    opening = rng.choice(OPENINGS).format(s=listed, d=rng.choice(DURATIONS))
    return f"{opening}. {rng.choice(SEVERITY)}".strip()


def generate(per_condition: int = 30, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for condition, symptoms in CONDITIONS.items():
        rows += [{"text": describe(symptoms, rng), "label": condition} for _ in range(per_condition)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, per_condition: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(generate(per_condition, seed))
    return path
