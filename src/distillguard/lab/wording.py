"""Wording drawn from wide pools, composed per account, so no fixed string identifies a family.

A :class:`Style` is what one operator (an attacker's script or a legitimate application) settles
on: for each slot of a request a few phrasings out of a wide pool, a separator, a casing habit and
a number of slots it bothers with. Two accounts of one family share almost no literal text; one
account is consistent with itself, as a script is. Pools hold interchangeable phrasings of the
same intent (ask for reasoning, ask for code, ask for a rating ...), written in several registers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


class Style:
    """One operator's phrasing habits: a few alternatives per slot, chosen once from wide pools."""

    SEPARATORS = ("\n\n", "\n", " ", "\n\n---\n", "\n### ", " | ")

    def __init__(self, rng: np.random.Generator, pools: dict[str, Sequence[str]], *,
                 per_slot: tuple[int, int] = (1, 4), optional: Sequence[str] = ()) -> None:
        self.choices: dict[str, list[str]] = {}
        for slot, pool in pools.items():
            k = int(rng.integers(per_slot[0], per_slot[1] + 1))
            idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
            self.choices[slot] = [pool[int(i)] for i in idx]
        # Optional slots: each operator keeps some of them, drops others, for good.
        self.dropped = {slot for slot in optional if rng.random() < 0.4}
        self.sep = pick(rng, self.SEPARATORS)
        self.case = int(rng.integers(4))           # 0 as written, 1 lower, 2 first-upper, 3 no final period
        self.numbered = bool(rng.random() < 0.25)  # "1) ..." prefixes on each part

    def say(self, rng: np.random.Generator, slot: str, **fields: Any) -> str:
        if slot in self.dropped:
            return ""
        text = pick(rng, self.choices[slot])
        return text.format(**fields) if fields else text

    def join(self, parts: Sequence[str]) -> str:
        parts = [p for p in parts if p]
        if self.numbered and len(parts) > 1:
            parts = [f"{i + 1}) {p}" for i, p in enumerate(parts)]
        text = self.sep.join(parts)
        if self.case == 1:
            text = text.lower()
        elif self.case == 2 and text:
            text = text[0].upper() + text[1:]
        elif self.case == 3:
            text = text.rstrip(".")
        return text


# --- asking for reasoning -------------------------------------------------------------------------
REASONING = (
    "Explain your reasoning step by step.", "Show every intermediate step.", "Think it through before answering.",
    "Walk me through how you get there.", "Give the full derivation, then the result.",
    "Lay out your thought process in detail first.", "Reason carefully and show the work.",
    "Don't skip steps; I want to see how you think.", "Break the solution down into numbered steps.",
    "Justify each step of the argument.", "Before the final answer, write out your analysis.",
    "Include your complete line of reasoning.", "Talk through the problem out loud, then conclude.",
    "Detail the logic behind each decision you make.", "Provide a rationale for every step.",
    "First analyse, then answer; keep the analysis.", "Please show your scratch work.",
    "Explain why, not just what.", "Trace the solution from first principles.",
    "Write your chain of reasoning in a <reasoning> block, then the answer.",
    "Think aloud, exploring alternatives, before settling on an answer.",
    "Decompose the problem and solve each part explicitly.",
)
ANSWER_FORMATS = (
    "End with the final answer on its own line.", "Put the answer after 'Final:'.", "Box the final result.",
    "Answer in JSON with keys reasoning and answer.", "Use markdown headings.", "Keep it under 600 words.",
    "Be thorough.", "Format the answer as a short report.", "", "Conclude with a one-line summary.",
)

# --- coding ---------------------------------------------------------------------------------------
CODE_LANGS = ("Python", "TypeScript", "Go", "Rust", "Java", "C++", "C#", "Kotlin", "Ruby", "PHP", "Swift",
              "Scala", "Elixir", "Haskell", "SQL", "Bash", "JavaScript", "Julia", "Lua", "Dart")
CODE_ARTIFACTS = ("function", "class", "module", "command-line tool", "small library", "REST handler",
                  "script", "generic utility", "async worker", "microservice endpoint", "iterator", "decorator",
                  "data pipeline step", "unit-tested helper", "streaming parser")
CODE_TASKS = (
    "parses a CSV file and groups rows by a column", "implements an LRU cache with a size bound",
    "validates e-mail addresses against RFC 5322", "merges overlapping intervals", "computes a moving average",
    "serialises and deserialises a binary tree", "rate-limits calls with a token bucket",
    "diffs two JSON documents and reports changed paths", "finds shortest paths in a weighted graph",
    "retries HTTP requests with exponential backoff and jitter", "tokenises arithmetic expressions",
    "deduplicates records by fuzzy name matching", "builds a trie and answers prefix queries",
    "schedules jobs with dependencies in topological order", "computes the edit distance of two strings",
    "parses ISO 8601 durations", "implements a bloom filter", "paginates a large SQL result set",
    "watches a directory and reacts to changed files", "implements consistent hashing",
    "encodes and decodes run-length compression", "evaluates reverse Polish notation",
    "converts Markdown tables to CSV", "detects cycles in a linked list", "implements a min-heap",
    "reads a config file with environment overrides", "signs and verifies JWTs", "resizes images in parallel",
    "streams a large file and counts word frequencies", "implements a circuit breaker",
    "solves sudoku by backtracking", "computes a Merkle root of files", "implements a ring buffer",
    "parses command-line flags with sub-commands", "renders a tree as ASCII art",
    "implements optimistic locking for a key-value store", "normalises Unicode text for search",
    "throttles a websocket broadcast", "implements a simple regex matcher", "batches database writes",
)
CODE_CONSTRAINTS = ("without third-party packages", "optimised for very large inputs", "with exhaustive error handling",
                    "safe for concurrent use", "using only the standard library", "with structured logging",
                    "in idiomatic style", "with O(n log n) complexity or better", "with property-based tests",
                    "with full type hints", "that never allocates in the hot loop", "with docstrings and examples",
                    "that is easy to extend", "with benchmarks", "")
CODE_OPENERS = ("Write a {lang} {artifact} that {task}.", "Implement, in {lang}, a {artifact} which {task}.",
                "I need a {lang} {artifact} that {task}.", "Create a {artifact} in {lang} that {task}.",
                "Can you code a {artifact} ({lang}) that {task}?", "Task: {lang} {artifact} that {task}.",
                "Produce production-quality {lang}: a {artifact} that {task}.",
                "Give me a {lang} implementation of a {artifact} that {task}.",
                "Build a {artifact} that {task}. Language: {lang}.", "{lang}: {artifact} that {task}, please.")
CODE_EXTRAS = ("Include unit tests.", "Explain the design choices.", "Add comments for tricky parts.",
               "Describe the complexity.", "Show example usage.", "Then review your own code for bugs.",
               "List edge cases you handled.", "Provide the tests first, then the code.", "")

# --- math -----------------------------------------------------------------------------------------
def math_problem(rng: np.random.Generator) -> str:
    a, b, c, d = (int(x) for x in rng.integers(2, 97, size=4))
    kind = int(rng.integers(14))
    return (
        f"Solve for x: {a}x + {b} = {c}x - {d}.",
        f"Find all real roots of x^2 - {a + b}x + {a * b} = 0.",
        f"What is the probability of at least {min(a, 6) % 5 + 1} sixes in {min(a, 6) % 5 + 4} rolls of a fair die?",
        f"A sequence starts {a}, {a + b}, {a + 2 * b}, ... What is the sum of its first {c} terms?",
        f"Compute the integral of x^{a % 5 + 1} * e^({b % 4 + 1}x) dx.",
        f"How many ways can {a % 9 + 3} people sit around a round table if two of them refuse to sit together?",
        f"Prove that the sum of the first {c} odd numbers is a perfect square.",
        f"A triangle has sides {a}, {b} and {max(abs(a - b) + 1, min(a + b - 1, c))}. Find its area.",
        f"Find gcd({a * c}, {b * c}) and lcm({a}, {b}).",
        f"A loan of {a * 1000} at {b % 12 + 1}% annual interest compounded monthly: what is owed after {c % 10 + 1} years?",
        f"Find the eigenvalues of the matrix [[{a % 10}, {b % 10}], [{c % 10}, {d % 10}]].",
        f"Differentiate f(x) = ln({a}x^2 + {b}) * sin({c % 7 + 1}x).",
        f"What is {a}^{b % 40 + 10} mod {c + 1}?",
        f"Two trains {a * 10} km apart head towards each other at {b} km/h and {c} km/h. When and where do they meet?",
    )[kind]


MATH_OPENERS = ("", "Problem:", "Here's one for you:", "Question:", "Exercise {n}.", "Solve the following.",
                "Math task:", "Consider this.", "Please help with:", "Competition problem:")

# --- personas -------------------------------------------------------------------------------------
PERSONA_ROLES = ("nurse", "high-school teacher", "software engineer", "farmer", "retired judge", "chef",
                 "graduate student in physics", "small-business owner", "truck driver", "UX designer",
                 "marine biologist", "accountant", "social worker", "novelist", "paramedic", "economist",
                 "librarian", "carpenter", "venture capitalist", "stand-up comedian", "pharmacist", "pilot",
                 "data scientist", "kindergarten teacher", "urban planner", "philosophy professor")
PERSONA_TRAITS = ("sceptical", "curious", "impatient", "meticulous", "optimistic", "anxious", "pragmatic",
                  "talkative", "blunt", "gentle", "sarcastic", "methodical", "idealistic", "frugal")
PERSONA_PLACES = ("Lagos", "Osaka", "rural Montana", "Berlin", "São Paulo", "Mumbai", "a Scottish village",
                  "Toronto", "Nairobi", "Melbourne", "Seoul", "Mexico City", "Cairo", "Helsinki", "Manila")
PERSONA_FORMS = ("You are a {trait} {role} from {place}, aged {age}.",
                 "Adopt this persona: {role}, {age}, lives in {place}, {trait} by nature.",
                 "Persona: {age}-year-old {role} ({place}); personality: {trait}.",
                 "Speak as {article} {trait} {role} based in {place}.",
                 "Imagine you are a {role} in {place}. You are {trait} and {age} years old.",
                 "Role-play: {role} | {place} | age {age} | temperament: {trait}.")
PERSONA_TASK_FORMS = ("{task}", "Respond to this in character: {task}", "Staying in persona, {task_lc}",
                      "From your perspective: {task}", "Answer as yourself: {task}")
GENERIC_TASKS = (
    "Describe your ideal weekend.", "Explain how you would budget for a family of four.",
    "Write a short letter to your younger self.", "What do you think about remote work? Argue your view.",
    "Explain inflation to a neighbour.", "Plan a three-day trip and explain the choices.",
    "Describe a difficult decision you made at work and how you reasoned about it.",
    "Give advice to someone starting in your profession.", "What would you change about your city?",
    "Explain climate change and what people like you can do.", "Review a book you loved.",
    "Write a product review for noise-cancelling headphones.", "Describe how you handle conflict.",
    "Write a complaint to a landlord about a broken heater.", "Explain machine learning as you understand it.",
    "Draft a speech for a friend's wedding.", "What is the best way to learn a new language?",
    "Write a short story about a lost dog.", "Compare owning and renting a home.",
    "Give your opinion on universal basic income, with reasons.",
)

# --- judging --------------------------------------------------------------------------------------
JUDGE_FRAMES = (
    "Evaluate the response below.", "You are an impartial judge.", "Assess the quality of this answer.",
    "Act as a strict grader.", "Please review the following assistant reply.", "Critique the answer provided.",
    "You're a reviewer on an annotation team.", "Score this completion.", "Give feedback on the reply.",
    "Compare the candidate answer against what an expert would write.",
)
JUDGE_CRITERIA = ("helpfulness", "accuracy", "clarity", "harmlessness", "honesty", "completeness", "concision",
                  "instruction following", "reasoning quality", "factuality", "tone", "coherence", "depth")
JUDGE_SCALES = ("Rate it 1-10.", "Give a score from 0 to 5.", "Score it out of 100.", "Use a 1-7 Likert scale.",
                "Output PASS or FAIL.", "Give a letter grade.", "Return a float between 0 and 1.",
                "Say which is better, A or B.", "Rank the answers from best to worst.")
JUDGE_OUTPUTS = ("Then justify the score.", "Explain the main weaknesses and how to fix them.",
                 "Return JSON: {{\"score\": ..., \"rationale\": ...}}.", "Write the critique first, then the score.",
                 "Suggest an improved answer.", "List strengths and weaknesses.", "Keep the feedback actionable.")
JUDGE_LAYOUTS = ("[Question]\n{q}\n\n[Answer]\n{a}", "Prompt: {q}\nResponse: {a}", "<question>{q}</question>\n<answer>{a}</answer>",
                 "### Instruction\n{q}\n### Candidate\n{a}", "User asked: \"{q}\"\nAssistant replied: \"{a}\"",
                 "Q: {q}\n\nA: {a}")

# --- self-instruct / evolution --------------------------------------------------------------------
SEED_INTROS = ("Here are some example tasks:", "Below are a few instructions a user might give:",
               "Examples of requests:", "Sample tasks from our set:", "Some instructions for inspiration:",
               "Existing prompts:", "Task pool (excerpt):")
GENERATE_ASKS = ("Come up with {m} new, diverse tasks.", "Write {m} more instructions in the same spirit but on different topics.",
                 "Generate {m} novel tasks; vary difficulty and format.", "Propose {m} additional prompts unlike these.",
                 "Brainstorm {m} fresh instructions, each self-contained.", "Create {m} new tasks, one per line.",
                 "List {m} new requests a user could make, with diverse verbs.")
FROM_ANSWER = ("Turn this passage into a challenging question and answer it:\n{x}",
               "Write an instruction whose ideal response would be the following, then give a better response:\n{x}",
               "Expand on this point in depth:\n{x}", "Based on the text below, create a new task and complete it.\n{x}",
               "Explain the following statement thoroughly, as if teaching it:\n{x}",
               "Derive three follow-up questions from this and answer each:\n{x}",
               "Rewrite this as a detailed tutorial:\n{x}", "{x}\n\nWhat question is this answering? Ask a harder one and answer it.")
EVOLVE_METHODS = ("add one more constraint or requirement", "replace general concepts with more specific ones",
                  "require multiple-step reasoning", "make it about a rarer topic in the same domain",
                  "increase the depth and breadth of the inquiry", "add a table or code to the input",
                  "make it more complex while staying answerable", "create a brand-new prompt in the same domain but rarer")
EVOLVE_FRAMES = ("I want you to act as a prompt rewriter. Rewrite the given prompt so that it is harder for AI systems to handle. Method: {method}.\n#Given Prompt#:\n{p}\n#Rewritten Prompt#:",
                 "Make this instruction more difficult ({method}). Only output the new instruction.\n\n{p}",
                 "Evolve the task below. Strategy: {method}. Keep it reasonable and understandable by humans.\nTask: {p}",
                 "Rewrite: \"{p}\"\nGoal: {method}. Output the rewritten instruction only.",
                 "Take this prompt and {method}:\n---\n{p}\n---",
                 "Here is an instruction. Produce a more sophisticated version of it ({method}).\n{p}")

# --- non-English ----------------------------------------------------------------------------------
LANGUAGE_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "es": {"asks": ("Explica {t}.", "¿Podrías explicarme {t}?", "Escribe un ensayo sobre {t}.", "Resume {t} en detalle.",
                    "¿Cuáles son las ventajas y desventajas de {t}?", "Describe paso a paso {t}.",
                    "Redacta una guía completa sobre {t}.", "Compara {t} con las alternativas."),
           "topics": ("la fotosíntesis", "la inflación", "la revolución francesa", "el aprendizaje automático",
                      "la energía solar", "el sistema inmunológico", "la teoría de juegos", "la economía circular",
                      "el cambio climático", "las redes neuronales", "la literatura del siglo de oro",
                      "la política monetaria", "la genética mendeliana", "la criptografía de clave pública",
                      "el urbanismo sostenible", "la historia de América Latina"),
           "extras": ("Razona paso a paso.", "Incluye ejemplos.", "Sé exhaustivo.", "Usa un lenguaje sencillo.", "")},
    "de": {"asks": ("Erkläre {t}.", "Kannst du mir {t} erklären?", "Schreibe einen Aufsatz über {t}.",
                    "Fasse {t} ausführlich zusammen.", "Was sind Vor- und Nachteile von {t}?",
                    "Beschreibe Schritt für Schritt {t}.", "Verfasse einen Leitfaden zu {t}.", "Vergleiche {t} mit Alternativen."),
           "topics": ("die Photosynthese", "die Inflation", "die Französische Revolution", "das maschinelle Lernen",
                      "die Solarenergie", "das Immunsystem", "die Spieltheorie", "die Kreislaufwirtschaft",
                      "den Klimawandel", "neuronale Netze", "die Weimarer Republik", "die Geldpolitik",
                      "die Vererbungslehre", "die Public-Key-Kryptografie", "nachhaltige Stadtplanung", "die Reformation"),
           "extras": ("Denke Schritt für Schritt.", "Gib Beispiele.", "Sei gründlich.", "Verwende einfache Sprache.", "")},
    "fr": {"asks": ("Explique {t}.", "Peux-tu m'expliquer {t} ?", "Rédige une dissertation sur {t}.", "Résume {t} en détail.",
                    "Quels sont les avantages et inconvénients de {t} ?", "Décris étape par étape {t}.",
                    "Écris un guide complet sur {t}.", "Compare {t} aux alternatives."),
           "topics": ("la photosynthèse", "l'inflation", "la Révolution française", "l'apprentissage automatique",
                      "l'énergie solaire", "le système immunitaire", "la théorie des jeux", "l'économie circulaire",
                      "le changement climatique", "les réseaux de neurones", "le siècle des Lumières",
                      "la politique monétaire", "la génétique", "la cryptographie à clé publique",
                      "l'urbanisme durable", "la décolonisation"),
           "extras": ("Raisonne étape par étape.", "Donne des exemples.", "Sois exhaustif.", "Utilise un langage simple.", "")},
    "pt": {"asks": ("Explique {t}.", "Você pode me explicar {t}?", "Escreva uma redação sobre {t}.", "Resuma {t} em detalhes.",
                    "Quais são as vantagens e desvantagens de {t}?", "Descreva passo a passo {t}.",
                    "Escreva um guia completo sobre {t}.", "Compare {t} com as alternativas."),
           "topics": ("a fotossíntese", "a inflação", "a independência do Brasil", "o aprendizado de máquina",
                      "a energia solar", "o sistema imunológico", "a teoria dos jogos", "a economia circular",
                      "as mudanças climáticas", "as redes neurais", "o modernismo brasileiro", "a política monetária",
                      "a genética", "a criptografia de chave pública", "o urbanismo sustentável", "a Amazônia"),
           "extras": ("Raciocine passo a passo.", "Inclua exemplos.", "Seja detalhado.", "Use linguagem simples.", "")},
    "it": {"asks": ("Spiega {t}.", "Puoi spiegarmi {t}?", "Scrivi un saggio su {t}.", "Riassumi {t} in dettaglio.",
                    "Quali sono i vantaggi e gli svantaggi di {t}?", "Descrivi passo dopo passo {t}.",
                    "Scrivi una guida completa su {t}.", "Confronta {t} con le alternative."),
           "topics": ("la fotosintesi", "l'inflazione", "il Rinascimento", "l'apprendimento automatico",
                      "l'energia solare", "il sistema immunitario", "la teoria dei giochi", "l'economia circolare",
                      "il cambiamento climatico", "le reti neurali", "la Divina Commedia", "la politica monetaria",
                      "la genetica", "la crittografia a chiave pubblica", "l'urbanistica sostenibile", "l'unità d'Italia"),
           "extras": ("Ragiona passo dopo passo.", "Includi esempi.", "Sii esauriente.", "Usa un linguaggio semplice.", "")},
}


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> int:
    """An integer between lo and hi, log-uniformly: most operators small, a few large."""
    return int(round(float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))
