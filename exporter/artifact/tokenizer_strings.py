"""The tokenizer golden strings: fixed cases plus seeded random ones, the same on every run.

A bundle's ``selftest.json`` carries their sentencepiece ids (rgmobile/package/selftest.py), and the
onnxruntime-genai ``tokenizer.json`` is checked against sentencepiece on them (exporter/artifact/genai.py).
"""

from __future__ import annotations

import random

# Fixed tokenizer strings: English, punctuation, whitespace runs (leading, trailing, double), tabs and
# newlines, the empty string, emoji, CJK, accents, digits, mixed. Special-token spellings ("<bos>") are
# left out: a Hugging Face tokenizer.json treats them as special tokens, sentencepiece as text.
FIXED_STRINGS: tuple[str, ...] = (
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \t \n ",
    "Hello", "Hello world", "hello, world!", " leading space", "trailing space ", "  two leading",
    "two trailing  ", "double  space", "triple   space", " both ", "tab\tseparated", "new\nline",
    "line one\nline two\n", "\ttabbed start", "ends with tab\t", "mixed \t whitespace \n here",
    "The quick brown fox jumps over the lazy dog.", "It's a dog's life, isn't it?",
    "Punctuation: ;:,.!?()[]{}<>\"'`~@#$%^&*-_=+|\\/", "...", "!!!", "?!", "a-b_c.d",
    "e-mail: someone@example.com", "https://example.org/path?q=1&r=2", "C:\\path\\to\\file.txt",
    "0", "7", "42", "1234567890", "3.14159", "-273.15", "1,000,000", "2026-12-01", "12:30:45", "v1.2.3",
    "room 101", "x2 + y2 = z2", "100%", "$9.99", "#1",
    "café", "naïve", "résumé", "déjà vu", "Zürich", "São Paulo", "Ångström", "crème brûlée", "ñandú", "Ærøskøbing",
    "Straße", "İstanbul", "ĳssel", "Ελληνικά", "русский язык", "עברית", "العربية", "हिन्दी",
    "漢字", "東京", "日本語のテキスト", "中文文本", "한국어", "ひらがな", "カタカナ", "你好，世界！",
    "🙂", "😀😃😄", "🌙✨", "👍🏽", "👨‍👩‍👧", "🇬🇧", "❤️", "emoji 🙂 in text", "🙂 leading emoji", "trailing emoji 🙂",
    "mixed: café 漢字 🙂 123", "Tokyo 東京 2026 🗼", "a\u00a0b (no-break space)", "zero\u200bwidth",
    "“curly quotes”", "‘single’", "em—dash", "en–dash", "ellipsis…", "° ± × ÷ µ", "©®™", "½ ¼ ¾",
    "UPPER CASE", "lower case", "Title Case Words", "camelCaseIdentifier", "snake_case_identifier",
    "def f(x):\n    return x + 1\n", "if (a && b) { c(); }", "<html><body>hi</body></html>", "{\"json\": [1, 2]}",
    "aaaaaaaaaaaaaaaaaaaa", "ababababab", ".,.,.,.,", "    indented four", "\n\nparagraph\n\n",
)  # fmt: skip

_WORDS = (
    "the", "a", "river", "stone", "house", "light", "café", "東京", "🙂", "42", "3.5", "naïve", "don't", "Hello",
    "world", "—", "漢字", "😀", "ñ", "ok", "yes", "no", "x", "data", "Zürich", "…", "100%", "é",
)  # fmt: skip
_SEPARATORS = (" ", "  ", "\t", "\n", ", ", ". ", "", " \n", "   ")


def tokenizer_strings(count: int = 240, seed: int = 0) -> list[str]:
    """FIXED_STRINGS plus seeded random combinations of words and separators, ``count`` in all."""
    rng = random.Random(seed)
    out = list(FIXED_STRINGS)
    while len(out) < count:
        n = rng.randint(1, 8)
        parts = [rng.choice(_WORDS) + rng.choice(_SEPARATORS) for _ in range(n)]
        text = ("" if rng.random() < 0.7 else rng.choice(_SEPARATORS)) + "".join(parts)
        if text not in out:
            out.append(text)
    return out
