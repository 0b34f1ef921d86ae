"""The built-in text corpora, by name: torch-free, so the API validates names without loading a model.

Both ship inside gensim's wheel (``gensim/test/test_data``), so they work offline:

- ``lee-news``: the Lee news corpus, 300 short news articles (one per line). The default: calibration,
  search and holdout all come from it.
- ``enwiki``: 100 English Wikipedia articles (encyclopedic prose, 3 MB), the articles of over 2,000
  characters in gensim's shortened dump, wiki markup removed. A second domain, so that a reconstruction
  fitted too closely to the news calibration text shows on text it was not fitted to.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

from common.errors import DatasetError

ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ENWIKI_MIN_CHARS = 2000  # shorter pages in the dump are redirects and stubs


def gensim_test_file(dataset: str, name: str) -> Path:
    """A file of gensim's ``test/test_data``; a DatasetError naming ``dataset`` when it is missing."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise DatasetError(f"dataset {dataset!r} needs the gensim package (pip install gensim)")
    path = Path(spec.origin).parent / "test" / "test_data" / name
    if not path.is_file():
        raise DatasetError(f"dataset {dataset!r}: {path} is missing from the gensim install")
    return path


def lee_news() -> list[str]:
    text = gensim_test_file("lee-news", "lee_background.cor").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _plain(wikitext: str) -> str:
    """Wiki markup to prose: gensim's markup filter, then bold/italic quotes, heading marks and blank runs."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(wikitext)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def enwiki() -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(gensim_test_file("enwiki", ENWIKI_FILE)) as dump:
        texts = [_plain(text) for _title, text, _page_id in extract_pages(dump)]
    return [text for text in texts if len(text) >= ENWIKI_MIN_CHARS and not text.upper().startswith("#REDIRECT")]


#: name → reader of its documents, in order (splits are taken by document position).
BUILTIN: dict[str, Callable[[], list[str]]] = {"lee-news": lee_news, "enwiki": enwiki}
BUILTIN_DATASETS: tuple[str, ...] = tuple(BUILTIN)
DEFAULT_DATASET = "lee-news"
