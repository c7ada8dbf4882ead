"""The demo model's corpus: English text that Debian packages ship under free terms.

- The King James Bible (package `bible-kjv-text`, read through its `bible` program):
  public domain. One document per chapter.
- The BSD fortune cookie files (package `fortunes`, /usr/share/games/fortunes, the
  non-offensive set): BSD licence. One document per fortune.

Documents are split into train and validation by a hash of their text, so the split
does not depend on file order or on which packages' versions are installed.
"""
import hashlib
import os
import re
import subprocess

FORTUNE_DIR = "/usr/share/games/fortunes"
# Pictures and non-English collections teach nothing about English prose.
SKIPPED_FORTUNE_FILES = {"ascii-art", "translate-me"}
VERSE_START = re.compile(r"^\s+\d+ ")
CHAPTER_HEADER = re.compile(r"^(?:[123] )?[A-Z][A-Za-z ]+ \d+$")  # "Genesis 1", "1 Samuel 3"


def bible_chapters():
    text = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters, verses = [], []
    for line in text.splitlines():
        if CHAPTER_HEADER.match(line):
            # A new chapter: the previous one is complete.
            if verses:
                chapters.append(" ".join(verses))
            verses = []
        elif VERSE_START.match(line):
            verses.append(VERSE_START.sub("", line).strip())
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()  # a wrapped verse continues
    if verses:
        chapters.append(" ".join(verses))
    return chapters


def fortunes(directory=FORTUNE_DIR):
    documents = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if "." in name or name in SKIPPED_FORTUNE_FILES or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for entry in handle.read().split("\n%\n"):
                entry = entry.strip("%\n ")
                if len(entry) >= 20:
                    documents.append(entry)
    return documents


def is_validation(document, validation_percent):
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    return digest[0] * 100 // 256 < validation_percent


def split(documents, validation_percent=2):
    train = [doc for doc in documents if not is_validation(doc, validation_percent)]
    validation = [doc for doc in documents if is_validation(doc, validation_percent)]
    return train, validation


def load(validation_percent=2):
    """Returns (train documents, validation documents)."""
    return split(bible_chapters() + fortunes(), validation_percent)
